"""The run directory of a training (``train --out DIR``): what makes a directory hold a run,
refusing or clearing it, the settings that may change on ``--resume`` and the record of those
changes, which periodic checkpoints stay, and the checkpoints ``--resume`` may fall back to.

Files of a run besides those of :mod:`assigndet.checkpoints`, :mod:`assigndet.monitor` and
:mod:`assigndet.evaluation`:

* ``config.yaml``  the resolved configuration, rewritten on each resume with the accepted changes
* ``run.json``     ``preset`` (the name given on the command line, when known), ``created``,
                   ``resume_history``: one entry per resume (``iteration``, ``time``,
                   ``changes``: ``{key: [old, new]}``)

Layer: above :mod:`assigndet.evaluation` and :mod:`assigndet.monitor` (whose file names it
knows), below :mod:`assigndet.engine` and the command line, which build on it.
"""
from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import OmegaConf

from . import checkpoints as ck
from .config import Config, apply_overrides, config_from_yaml, config_to_yaml
from .errors import CheckpointError, ConfigError
from .evaluation import (DETECTIONS_FILE, EVAL_FILE, EVAL_HISTORY_FILE, PR_CURVES_FILE, RUN_CONFIG_FILE,
                         RUN_PLOT_FILES)
from .monitor import METRICS_FILE
from .utils import TMP_GLOB, atomic_write_text, remove_stale_tmp, set_rng_state

CONFIG_FILE = RUN_CONFIG_FILE
RUN_FILE = "run.json"
#: the settings that may change when a run is resumed; every other one is the saved run's
RESUMABLE_KEYS = ("solver.max_iter", "solver.checkpoint_period", "solver.eval_period", "solver.log_period",
                  "solver.keep_last", "data.num_workers", "test.num_workers", "device", "model.fast_path")
#: a directory holding one of these holds a run
RUN_MARKERS = (CONFIG_FILE, RUN_FILE, ck.LAST_CHECKPOINT, METRICS_FILE, f"model_*{ck.WEIGHTS_SUFFIX}")
#: the files a run writes: what ``overwrite=True`` deletes (nothing else in the directory is touched)
RUN_OUTPUTS = (*RUN_MARKERS, f"model_*{ck.STATE_SUFFIX}", EVAL_FILE, EVAL_HISTORY_FILE, DETECTIONS_FILE, PR_CURVES_FILE,
               *RUN_PLOT_FILES, TMP_GLOB, "tensorboard/events.out.tfevents.*", "predictions/*.png")
_PERIODIC = re.compile(r"^model_(\d{7})" + re.escape(ck.WEIGHTS_SUFFIX) + "$")
_ANY_CKPT = re.compile(r"^model_(?:emergency_)?(\d{7})" + re.escape(ck.WEIGHTS_SUFFIX) + "$")
Say = Callable[[str], None]


def emergency_name(iteration: int) -> str:
    """The name of the checkpoint saved when training fails at ``iteration``."""
    return f"model_emergency_{iteration:07d}"


# ---------------------------------------------------------------------------- the directory
def holds_run(out: Path) -> bool:
    return out.is_dir() and any(next(out.glob(m), None) is not None for m in RUN_MARKERS)


def check_fresh(out: Path, overwrite: bool) -> None:
    """A fresh run may not go into a directory that holds one, unless ``overwrite``."""
    if not overwrite and holds_run(out):
        raise ConfigError(f"{out} already holds a training run: continue it with --resume, or give a new --out "
                          "(--overwrite deletes that run's files)")


def clear_run(out: Path) -> int:
    """Delete the files an earlier run wrote in ``out`` (:data:`RUN_OUTPUTS`; empty
    ``tensorboard/`` and ``predictions/`` folders too); returns how many."""
    n = 0
    for pattern in RUN_OUTPUTS:
        for p in out.glob(pattern):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    for sub in ("tensorboard", "predictions"):
        with contextlib.suppress(OSError):
            (out / sub).rmdir()  # only when empty
    return n


def check(out: Path, cfg: Config, *, resume: bool, overwrite: bool) -> Optional[dict[str, tuple[Any, Any]]]:
    """Read-only (every process): may ``cfg`` start (or, ``resume``, continue) a run in ``out``?
    Returns the accepted changes of a resume (None: a fresh run)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or replace it")
    if resume and (out / CONFIG_FILE).is_file():
        return check_resume(out, cfg)
    check_fresh(out, overwrite)
    return None if not resume else {}


def prepare(out: Path, cfg: Config, *, resume: bool, overwrite: bool, preset: Optional[str], say: Say) -> None:
    """Rank 0, after :func:`check`: clear an overwritten run, remove the temporary files of
    killed saves, write ``config.yaml`` (and ``run.json`` for a new run)."""
    if overwrite and holds_run(out):
        say(f"--overwrite: deleted the {clear_run(out)} files of the earlier run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    count, size = remove_stale_tmp(out)
    if count:
        say(f"removed {count} temporary file(s) ({size / 1e6:.1f} MB) left by an interrupted save in {out}")
    if not (resume and (out / RUN_FILE).is_file()):
        info = {"preset": preset, "created": _now(), "resume_history": []}
        atomic_write_text(out / RUN_FILE, json.dumps(info, indent=1) + "\n")
    atomic_write_text(out / CONFIG_FILE, config_to_yaml(cfg))


def record_resume(out: Path, iteration: int, changes: dict[str, tuple[Any, Any]], say: Say) -> None:
    """Append a ``resume_history`` entry to ``run.json`` and say each accepted change."""
    info = read_info(out)
    info.setdefault("resume_history", []).append(
        {"time": _now(), "iteration": int(iteration), "changes": {k: list(v) for k, v in changes.items()}})
    atomic_write_text(out / RUN_FILE, json.dumps(info, indent=1) + "\n")
    for k, (old, new) in changes.items():
        say(f"resume: {k} changed from {old} to {new} (recorded in {out / RUN_FILE})")


def read_info(out: Path) -> dict[str, Any]:
    """``run.json`` of ``out`` ({} when there is none or it is unreadable)."""
    try:
        return dict(json.loads((out / RUN_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ------------------------------------------------------------------------------- resuming
def _flat(cfg: Config) -> dict[str, Any]:
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(tree, "")
    return out


def config_changes(saved: Config, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for every setting of both that differs (a key of one
    schema only, e.g. a plain ``ModelConfig`` against the saved architecture's, is no change)."""
    a, b = _flat(saved), _flat(cfg)
    return {k: (a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k]}


def check_resume(out: Path, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """The changes of ``cfg`` against the run saved in ``out``; a change outside
    :data:`RESUMABLE_KEYS` is a ConfigError naming it."""
    saved = config_from_yaml(str(out / CONFIG_FILE))
    changes = config_changes(saved, cfg)
    if "model.arch" in changes:
        old, new = changes["model.arch"]
        raise ConfigError(f"{out} holds a {old} run; it cannot be resumed as {new} (give the preset it was trained "
                          "with, or a new --out)")
    refused = [f"{k}: {old} -> {new}" for k, (old, new) in changes.items() if k not in RESUMABLE_KEYS]
    if refused:
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise ConfigError(f"resuming {out} would change {'; '.join(refused[:3])}{more}; only "
                          f"{', '.join(RESUMABLE_KEYS)} may change on --resume (start a new run with another --out)")
    return changes


def resume_config(out: Path, preset: str, preset_cfg: Config, overrides: list[str]) -> Config:
    """The config to resume ``out`` with from the command line: the saved ``config.yaml`` with
    the accepted ``overrides``. ``preset`` / ``preset_cfg`` (the command line's) must be the run's."""
    saved = config_from_yaml(str(out / CONFIG_FILE))
    was = read_info(out).get("preset")
    if was and was != preset:
        raise ConfigError(f"{out} holds a run of preset {was}, not {preset}: resume it with `train {was} --out {out} "
                          "--resume`, or give a new --out")
    if preset_cfg.model.arch is not saved.model.arch:
        raise ConfigError(f"{out} holds a {saved.model.arch} run; preset {preset} is {preset_cfg.model.arch}: "
                          "resume with the preset it was trained with, or give a new --out")
    cfg = apply_overrides(saved, overrides)
    check_resume(out, cfg)
    return cfg


# ---------------------------------------------------------------------------- checkpoints
def _iteration_of(name: str) -> int:
    m = _ANY_CKPT.match(name)
    return int(m.group(1)) if m else 1 << 62  # model_final: the last one


def _pointer(out: Path) -> str:
    """The file name ``last_checkpoint`` holds ("" when there is none)."""
    pointer = out / ck.LAST_CHECKPOINT
    return pointer.read_text().strip() if pointer.is_file() else ""


def checkpoint_candidates(out: Path) -> list[Path]:
    """The complete-looking checkpoints of ``out`` (weights + training state) to resume from, in
    order: the one ``last_checkpoint`` names, then the others, newest iteration first."""
    found = [p for p in out.glob(f"model_*{ck.WEIGHTS_SUFFIX}") if ck.state_path_for(p).is_file()]
    found.sort(key=lambda p: (_iteration_of(p.name), p.stat().st_mtime), reverse=True)
    named = _pointer(out)
    first = [p for p in found if p.name == named]
    return first + [p for p in found if p.name != named]


@dataclass
class Trainables:
    """What a training checkpoint holds: the model's weights (``.safetensors``) and the state of
    optimiser, schedule, grad scaler, RNGs and iteration (``.state.pt``)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[Any]

    def save(self, out: Path, name: str, iteration: int, *, rngs: list[Any], world: int, config: str,
             metadata: dict[str, str]) -> Path:
        """Checkpoint ``name`` at ``iteration`` with one RNG state per process (``rngs``)."""
        state: dict[str, Any] = {"iteration": int(iteration), "optimizer": self.optimizer.state_dict(),
                                 "scheduler": self.scheduler.state_dict(), "rng": rngs, "world_size": int(world),
                                 "config": config}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return ck.save_checkpoint(out, name, model=self.model, state=state, metadata=metadata)

    def restore(self, path: Path, rank: int, world: int, say: Say) -> int:
        """Everything from checkpoint ``path`` (this rank's RNG states when it was written by
        ``world`` processes); its iteration. CheckpointError when a file of it is unreadable."""
        ck.load_weights(self.model, path)
        state = ck.load_training_state(ck.state_path_for(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng", [])
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        else:
            say(f"checkpoint was written by {len(rngs)} processes, now {world}: RNG states not restored")
        return int(state["iteration"])


def resume(out: Path, trainables: Trainables, rank: int, world: int, say: Say) -> tuple[int, Path]:
    """Restore the checkpoint ``last_checkpoint`` names or, when it is unreadable, the newest
    readable one before it (said on one line); returns its iteration and path."""
    candidates = checkpoint_candidates(out)
    for k, path in enumerate(candidates):
        try:
            iteration = trainables.restore(path, rank, world, say)
        except CheckpointError as e:
            nxt = f"falling back to {candidates[k + 1].name}" if k + 1 < len(candidates) else "no other checkpoint"
            say(f"{path.name} is unreadable ({e}); {nxt}")
            continue
        say(f"resuming from {path.name} at iteration {iteration}")
        return iteration, path
    raise CheckpointError(f"no readable checkpoint in {out} to resume from ({len(candidates)} tried): start a new "
                          "run with another --out, or --overwrite")


def prune_checkpoints(out: Path, keep_last: int) -> list[str]:
    """Delete periodic checkpoints (``model_NNNNNNN``) beyond the newest ``keep_last`` (>= 1, the
    config checks it); the final, emergency and ``last_checkpoint`` ones always stay. Returns the
    names removed."""
    named = _pointer(out)
    periodic = sorted((p for p in out.glob(f"model_*{ck.WEIGHTS_SUFFIX}") if _PERIODIC.match(p.name)),
                      key=lambda p: _iteration_of(p.name), reverse=True)
    removed = []
    for p in periodic[keep_last:]:
        if p.name == named:
            continue
        with contextlib.suppress(OSError):
            ck.state_path_for(p).unlink(missing_ok=True)
            p.unlink()
            removed.append(p.name)
    return removed


__all__ = ["CONFIG_FILE", "RUN_FILE", "RESUMABLE_KEYS", "RUN_MARKERS", "RUN_OUTPUTS", "emergency_name", "holds_run",
           "check_fresh", "clear_run", "check", "prepare", "record_resume", "read_info", "config_changes", "check_resume", "resume_config",
           "checkpoint_candidates", "Trainables", "resume", "prune_checkpoints"]
