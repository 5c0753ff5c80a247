"""The files of a run directory that the plots read, read leniently.

A run directory is what ``assigndet train`` (or ``eval --out``) writes: ``metrics.jsonl`` (one
row per log period: the losses, ``total``, ``lr``, timings), ``eval_history.jsonl`` (one row per
evaluation), ``eval.json`` (the last evaluation, with ``per_class``) and ``pr_curves.json``
(its precision-recall curves). Any of them may be missing (no evaluation yet); a directory
with none of them is not a run.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import InputError
from ..evaluation import EVAL_FILE, EVAL_HISTORY_FILE, PR_CURVES_FILE
from ..monitor import METRICS_FILE

RUN_FILES = (METRICS_FILE, EVAL_HISTORY_FILE, EVAL_FILE, PR_CURVES_FILE)


@dataclass
class RunData:
    """What the plots of one run read; ``label`` names it in legends."""

    label: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    eval: Optional[dict[str, Any]] = None
    curves: Optional[dict[str, Any]] = None

    def loss_keys(self) -> list[str]:
        """The logged losses (``loss_*``) in first-seen order, then ``total``."""
        keys: dict[str, None] = {}
        for row in self.metrics:
            keys.update((k, None) for k, v in row.items() if k.startswith("loss") and _is_number(v))
        return list(keys) + (["total"] if any("total" in r for r in self.metrics) else [])

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(iterations, values) of ``metrics.jsonl`` column ``key`` where it is a finite number."""
        pts = [(float(r["iteration"]), float(r[key])) for r in self.metrics
               if _is_number(r.get(key)) and _is_number(r.get("iteration"))]
        return [p[0] for p in pts], [p[1] for p in pts]

    def history_series(self, key: str) -> tuple[list[float], list[float]]:
        """(iteration or evaluation number, value) of ``key`` over the evaluations (≥ 0 only)."""
        pts = [(float(r.get("iteration", i)), float(r[key])) for i, r in enumerate(self.history)
               if _is_number(r.get(key)) and r[key] >= 0]
        return [p[0] for p in pts], [p[1] for p in pts]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The object rows of a JSON-lines file; unparsable lines (a run killed mid-write) are skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _json(path: Path) -> Optional[dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"cannot read {path}: {e}") from None
    return obj if isinstance(obj, dict) else None


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in RUN_FILES)


def load_run(run_dir: str | Path, label: Optional[str] = None) -> RunData:
    """The plotted files of ``run_dir``; a missing directory or one holding none of
    :data:`RUN_FILES` is an :class:`~assigndet.errors.InputError` naming it."""
    path = Path(run_dir)
    if not path.is_dir():
        raise InputError(f"run directory not found: {path}")
    if not is_run_dir(path):
        raise InputError(f"{path} is not a run directory (none of {', '.join(RUN_FILES)} in it)")
    return RunData(label=label or path.resolve().name, metrics=read_jsonl(path / METRICS_FILE),
                   history=read_jsonl(path / EVAL_HISTORY_FILE), eval=_json(path / EVAL_FILE),
                   curves=_json(path / PR_CURVES_FILE))


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Legend labels: the directory names, with parent directories added until they differ."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in run_dirs]


__all__ = ["RUN_FILES", "RunData", "read_jsonl", "is_run_dir", "load_run", "run_labels"]
