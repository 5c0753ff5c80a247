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

:func:`load_weights` is the one way to load weights into a model: this library's
``.safetensors`` and ``.pth`` files and the released checkpoints of the original repositories,
whose key names :mod:`assigndet.released` converts (``layout="auto"`` recognises them).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .errors import CheckpointError, UserError
from .released import CLASSIFIER_KEYS, RELEASED_ARCHS, check_layout, convert_state_dict, read_checkpoint
from .utils import atomic_write_bytes, atomic_write_text

log = logging.getLogger("assigndet")

WEIGHTS_SUFFIX = ".safetensors"
#: the suffixes of torch files (this library's ``.pth`` or a released checkpoint)
PTH_SUFFIXES = (".pth", ".pt", ".pkl", ".bin")
STATE_SUFFIX = ".state.pt"
LAST_CHECKPOINT = "last_checkpoint"
FINAL_NAME = "model_final"
_MAX_KEYS_SHOWN = 8


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
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read weights file {path}: {e}") from None


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, file, model
    metadata: dict[str, str] = field(default_factory=dict)
    layout: str = "assigndet"  # the layout the file was read as (assigndet.released.LAYOUTS)

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


def load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str, strict: bool = True,
               metadata: Optional[Mapping[str, str]] = None, layout: str = "assigndet") -> LoadReport:
    """Load an in-memory state dict (this library's key names) into ``model``.

    With ``strict=True`` any missing, unexpected or mis-shaped key raises a
    :class:`CheckpointError` that names the keys and ``source``; with ``strict=False`` the
    compatible entries are loaded and the returned :class:`LoadReport` lists the rest.
    """
    model = unwrap_model(model)
    expected = model.state_dict()
    report = LoadReport(metadata=dict(metadata or {}), layout=layout)
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
        raise CheckpointError(f"weights file {source} does not match the model: {report.describe()}")
    model.load_state_dict(loadable, strict=False)
    return report


def _check_classifier(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Re-initialise (``model.reinit_classifier``) or refuse a classifier of another class count."""
    own = model.state_dict()
    if not all(k in own for k in CLASSIFIER_KEYS):
        return state
    w_key, b_key = CLASSIFIER_KEYS
    if getattr(getattr(model, "cfg", None), "reinit_classifier", False):
        n_file = state[b_key].shape[0] if b_key in state else "?"
        state = dict(state)
        for k in CLASSIFIER_KEYS:
            state[k] = own[k].detach().clone()
        log.info("reinitialised the classifier (%s: %s classes in %s -> %d in the model) for fine-tuning",
                 ", ".join(CLASSIFIER_KEYS), n_file, source, own[b_key].shape[0])
        return state
    w = state.get(w_key)
    if w is not None and w.shape[0] != own[w_key].shape[0]:  # another class count (other shapes: a layout error)
        num_anchors = getattr(getattr(model, "anchor_generator", None), "num_anchors_per_location", 1)
        n_file, n_own = w.shape[0] // num_anchors, own[b_key].shape[0] // num_anchors
        b_file = list(state[b_key].shape) if b_key in state else "?"
        raise CheckpointError(
            f"{source} has a classifier for {n_file} classes ({w_key} {list(w.shape)}, {b_key} {b_file}) "
            f"but the model has {n_own} ({list(own[w_key].shape)}): set model.num_classes={n_file}, or "
            "model.reinit_classifier=true to fine-tune with a fresh classifier")
    return state


def _trained_for(meta: Mapping[str, str]) -> Optional[tuple[str, int]]:
    """(arch, num_classes) of the config stored in a weights file's metadata (None: not stored)."""
    try:
        model_cfg = OmegaConf.create(meta["config"]).model
        return str(model_cfg.arch), int(model_cfg.num_classes)
    except Exception:  # noqa: BLE001  (no config, not YAML, no such keys: nothing to compare)
        return None


def _check_trained_for(meta: Mapping[str, str], model: torch.nn.Module, path: Path) -> None:
    """Refuse weights whose stored config is another architecture, or another class count
    (unless the model re-initialises its classifier for fine-tuning)."""
    cfg = getattr(model, "cfg", None)
    stored = _trained_for(meta)
    if stored is None or cfg is None or not hasattr(cfg, "arch"):
        return
    arch, classes = stored
    want_arch, want_classes = str(cfg.arch), int(cfg.num_classes)
    other_classes = classes != want_classes and not getattr(cfg, "reinit_classifier", False)
    if arch != want_arch or other_classes:
        raise CheckpointError(f"{path} holds weights of model.arch={arch} with {classes} classes but the preset/config "
                              f"builds model.arch={want_arch} with {want_classes} classes: use the preset it was trained "
                              "with (its config.yaml), or model.reinit_classifier=true to fine-tune another class count")


def _released_layout(model: torch.nn.Module, layout: str, is_pth: bool) -> str:
    """The layout to convert from: ``layout`` unless "auto"; auto recognises released layouts in
    the ``.pth`` files of the architectures they exist for, and is this library's own otherwise."""
    if check_layout(layout) != "auto":
        return layout
    arch = getattr(getattr(model, "cfg", None), "arch", None)
    return "auto" if is_pth and arch in RELEASED_ARCHS else "assigndet"


def load_weights(model: torch.nn.Module, path: str | os.PathLike, *, layout: str = "auto",
                 strict: bool = True) -> LoadReport:
    """Load weights into ``model``: a ``.safetensors`` file of this library, a ``.pth`` of
    ``model.state_dict()``, or a checkpoint released by the original repositories (SPEC §7).

    ``layout``: ``"auto"`` recognises the released layouts by their key names (for the dense
    detectors' ``.pth`` files; a ``.safetensors`` file is this library's); one of
    :data:`assigndet.released.LAYOUTS` forces it. Released files are converted by
    :func:`assigndet.released.convert_state_dict` (stored anchors compared with the model's). A
    classifier of another class count is refused with a clear error, or re-initialised when the
    model's config says ``reinit_classifier``. ``strict``: see :func:`load_state`; the report
    also names the layout the file was read as.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    model = unwrap_model(model)
    meta: dict[str, str] = {}
    if path.suffix == WEIGHTS_SUFFIX:
        state, meta = read_weights(path)
    elif path.suffix in PTH_SUFFIXES:
        state = read_checkpoint(path)
    else:
        raise CheckpointError(f"unsupported weights file type {path.suffix!r} (expected .safetensors or .pth): {path}")
    layout = _released_layout(model, layout, path.suffix in PTH_SUFFIXES)
    if layout != "assigndet":
        gen = getattr(model, "anchor_generator", None)
        state, layout = convert_state_dict(state, getattr(model, "cfg", None), model.state_dict().keys(),
                                           layout=layout, anchor_cells=gen.cells() if gen is not None else None,
                                           source=str(path))
        if layout != "assigndet":
            log.info("%s: %s layout, %d tensors mapped", path, layout, len(state))
    if strict:
        _check_trained_for(meta, model, path)
    state = _check_classifier(state, model, str(path))
    return load_state(model, state, source=str(path), strict=strict, metadata=meta, layout=layout)


def load_detector_weights(model: torch.nn.Module, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
    """Deprecated (one release): ``assigndet.released.load_detector_weights`` is now :func:`load_weights`."""
    warnings.warn("load_detector_weights is deprecated: use assigndet.checkpoints.load_weights", DeprecationWarning,
                  stacklevel=2)
    return load_weights(model, path, strict=strict)

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
    weights, state_file = out / f"{name}{WEIGHTS_SUFFIX}", out / f"{name}{STATE_SUFFIX}"
    written: list[Path] = []
    try:
        if state is not None:
            save_training_state(state_file, state)
            written.append(state_file)
        save_weights(model, weights, metadata=metadata)
        written.append(weights)
        atomic_write_text(out / LAST_CHECKPOINT, weights.name + "\n")
    except BaseException as e:
        for p in written:  # half a checkpoint is no checkpoint: last_checkpoint still names the previous one
            with contextlib.suppress(OSError):
                p.unlink()
        if isinstance(e, UserError):
            pointer = out / LAST_CHECKPOINT
            prev = pointer.read_text().strip() if pointer.is_file() else ""
            kept = f"last_checkpoint still names {prev}, which is intact" if prev else "there is no earlier checkpoint"
            raise CheckpointError(f"checkpoint {name} not saved: {e}; {kept} (continue with --resume once the cause "
                                  "is fixed)") from e
        raise
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
    "CheckpointError", "LoadReport", "save_weights", "read_weights", "load_weights", "load_state",
    "load_detector_weights", "PTH_SUFFIXES",
    "save_training_state", "load_training_state", "save_checkpoint", "last_checkpoint", "checkpoint_name",
    "state_path_for", "unwrap_model", "WEIGHTS_SUFFIX", "STATE_SUFFIX", "LAST_CHECKPOINT",
    "FINAL_NAME",
]
