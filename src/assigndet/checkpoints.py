"""Checkpoints: model weights in safetensors, solver state in a ``weights_only`` torch file.

Layout of an output directory after training::

    model_0005000.safetensors      weights (parameters + persistent buffers) at iteration 5000
    model_0005000.state.pt         optimizer, scheduler, grad scaler, iteration, RNG states,
                                   resolved config (YAML) -- what ``--resume`` needs
    model_final.safetensors        the same at the end of training
    model_final.state.pt
    last_checkpoint                one line: the file name of the newest complete weights file

Every file is written atomically (temporary file in the same directory, fsync, ``os.replace``)
and ``last_checkpoint`` is rewritten only after both files of a checkpoint are complete, so a
crash at any moment leaves the previous checkpoint intact and pointed to.

Released ``.pth`` checkpoints of the original repositories use other key names; their conversion
is a hook (:func:`register_pth_loader`) that the detector code installs.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .utils import atomic_write_bytes, atomic_write_text

WEIGHTS_SUFFIX = ".safetensors"
STATE_SUFFIX = ".state.pt"
LAST_CHECKPOINT = "last_checkpoint"
FINAL_NAME = "model_final"
_MAX_KEYS_SHOWN = 8


class CheckpointError(ValueError):
    """A missing, unreadable or incompatible checkpoint file (a user error)."""


# ------------------------------------------------------------------------------------ weights
def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _state_dict_for_saving(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two entries sharing storage (safetensors refuses shared or
    overlapping tensors; tied weights are stored once per key and re-tied by ``load_state_dict``)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"state entry {key!r} is not a tensor ({type(t).__name__})")
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and (ptr in seen or not t.is_contiguous() or t.storage_offset() != 0
                                or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
            t = t.contiguous().clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


def save_weights(model_or_state: torch.nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, *,
                 metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write parameters and persistent buffers to ``path`` (safetensors), atomically.

    ``metadata`` is a ``str → str`` map stored in the file header (e.g. class names, config).
    """
    if isinstance(model_or_state, torch.nn.Module):
        state = unwrap_model(model_or_state).state_dict()
    else:
        state = dict(model_or_state)
    tensors = _state_dict_for_saving(state)
    meta = {"format": "pt", "producer": "assigndet"}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict and the header metadata of a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read weights file {path}: {e}") from None


_PTH_LOADER: Optional[Callable[[str, torch.nn.Module], Mapping[str, torch.Tensor]]] = None


def register_pth_loader(fn: Optional[Callable[[str, torch.nn.Module], Mapping[str, torch.Tensor]]]) -> None:
    """Install the converter for released ``.pth``/``.pkl`` checkpoints: ``fn(path, model)``
    returns a state dict in this library's key names (for the given model)."""
    global _PTH_LOADER
    _PTH_LOADER = fn


def _default_pth_state(path: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (unpickling errors come in many types)
        raise CheckpointError(f"cannot read {path} with torch.load(weights_only=True): {str(e).splitlines()[0]}") \
            from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, file, model
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        def keys(items: list[str]) -> str:
            shown = ", ".join(items[:_MAX_KEYS_SHOWN])
            more = len(items) - _MAX_KEYS_SHOWN
            return shown + (f", ... and {more} more" if more > 0 else "")

        parts = []
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {keys(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {keys(self.unexpected)}")
        if self.mismatched:
            items = [f"{k} (file {list(a)} vs model {list(b)})" for k, a, b in self.mismatched]
            parts.append(f"shape mismatch ({len(items)}): {keys(items)}")
        return "; ".join(parts)


def load_weights(model: torch.nn.Module, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
    """Load a ``.safetensors`` file (or, through the registered hook, a released ``.pth``)
    into ``model``.

    With ``strict=True`` any missing, unexpected or mis-shaped key raises a
    :class:`CheckpointError` that names the keys; with ``strict=False`` the compatible entries
    are loaded and the returned :class:`LoadReport` lists the rest.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    model = unwrap_model(model)
    meta: dict[str, str] = {}
    if path.suffix == WEIGHTS_SUFFIX:
        state, meta = read_weights(path)
    elif path.suffix in (".pth", ".pt", ".pkl", ".bin"):
        state = dict(_PTH_LOADER(str(path), model)) if _PTH_LOADER is not None else _default_pth_state(str(path))
    else:
        raise CheckpointError(f"unsupported weights file type {path.suffix!r} (expected .safetensors or .pth): {path}")

    expected = model.state_dict()
    report = LoadReport(metadata=meta)
    report.missing = [k for k in expected if k not in state]
    report.unexpected = [k for k in state if k not in expected]
    loadable = {}
    for k, v in state.items():
        if k not in expected:
            continue
        if tuple(v.shape) != tuple(expected[k].shape):
            report.mismatched.append((k, tuple(v.shape), tuple(expected[k].shape)))
        else:
            loadable[k] = v
    if strict and not report.ok:
        raise CheckpointError(f"weights file {path} does not match the model: {report.describe()}")
    model.load_state_dict(loadable, strict=False)
    return report


# ------------------------------------------------------------------------------ training state
def save_training_state(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """``torch.save`` of a dict of tensors/containers/primitives, atomically. It must be
    loadable with ``torch.load(weights_only=True)`` (no arbitrary objects)."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training-state file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read training state {path}: {str(e).splitlines()[0]}") from None


def checkpoint_name(iteration: int) -> str:
    return f"model_{iteration:07d}"


def save_checkpoint(output_dir: str | os.PathLike, name: str, *, model: torch.nn.Module,
                    state: Optional[Mapping[str, Any]] = None,
                    metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``name.safetensors`` (+ ``name.state.pt`` when ``state`` is given), then point
    ``last_checkpoint`` at it. Returns the weights path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if state is not None:
        save_training_state(out / f"{name}{STATE_SUFFIX}", state)
    weights = save_weights(model, out / f"{name}{WEIGHTS_SUFFIX}", metadata=metadata)
    atomic_write_text(out / LAST_CHECKPOINT, weights.name + "\n")
    return weights


def last_checkpoint(output_dir: str | os.PathLike) -> Optional[Path]:
    """The weights file named by ``output_dir/last_checkpoint`` (None if there is none)."""
    out = Path(output_dir)
    pointer = out / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not name:
        return None
    path = out / name
    if not path.is_file():
        raise CheckpointError(f"{pointer} names {name}, which does not exist")
    return path


def state_path_for(weights_path: str | os.PathLike) -> Path:
    p = Path(weights_path)
    return p.with_name(p.name[: -len(WEIGHTS_SUFFIX)] + STATE_SUFFIX) if p.name.endswith(WEIGHTS_SUFFIX) \
        else p.with_suffix(STATE_SUFFIX)


__all__ = [
    "CheckpointError", "LoadReport", "save_weights", "read_weights", "load_weights", "register_pth_loader",
    "save_training_state", "load_training_state", "save_checkpoint", "last_checkpoint", "checkpoint_name",
    "state_path_for", "unwrap_model", "WEIGHTS_SUFFIX", "STATE_SUFFIX", "LAST_CHECKPOINT",
    "FINAL_NAME",
]
