"""The plots of a training run, and of several runs overlaid (``assigndet plot``).

Every function takes a list of :class:`~assigndet.viz.runs.RunData`: with one run the figures
show it in detail (each loss, each class), with several they overlay the runs, one colour per
run. AP is plotted in percent; the files hold fractions. Figures use matplotlib's ``Figure``
API (no pyplot: no global backend, nothing left open).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..evaluation import PR_IOUS, RUN_PLOT_FILES
from .runs import RunData, is_run_dir, load_run, read_jsonl

logger = logging.getLogger("assigndet")

DPI = 100
LOSS_PNG, AP_PNG, PR_PNG, PER_CLASS_PNG = RUN_PLOT_FILES
#: AP columns of eval_history.jsonl drawn over the evaluations, with their line styles
_AP_STYLES = {"AP": "-", "AP50": "--", "AP75": ":"}
_MAX_CLASS_LEGEND = 10  # more classes than this: per-class PR curves in grey, without legend


def _save(fig: Figure, png: Path) -> Path:
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=DPI)
    return png


def _lr_axis(ax, runs: Sequence[RunData]) -> None:
    for i, run in enumerate(runs):
        ax.plot(*run.series("lr"), color=f"C{i}", label=run.label if len(runs) > 1 else None)
    ys = [v for run in runs for v in run.series("lr")[1] if v > 0]
    if ys and max(ys) > 10 * min(ys):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)


def _loss_axis(ax, runs: Sequence[RunData], keys: Sequence[str], title: Optional[str] = None) -> None:
    """The ``keys`` of every run on one axis (log scale): colour per key for one run, per run otherwise."""
    for i, run in enumerate(runs):
        for j, key in enumerate(keys):
            its, vals = run.series(key)
            color = f"C{i}" if len(runs) > 1 else ("black" if key == "total" else f"C{j}")
            ax.plot(its, vals, color=color, linewidth=2 if key == "total" else 1,
                    label=run.label if len(runs) > 1 else key)
    if any(v > 0 for run in runs for k in keys for v in run.series(k)[1]):
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.set_title(title or "")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_losses(runs: Sequence[RunData], png: Path) -> Optional[Path]:
    """Losses (log scale) and learning rate over the iterations of ``metrics.jsonl``: one run on
    two stacked axes (every loss and the total; the LR), several runs one axis per loss;
    ``None`` when no run has a logged row."""
    if not any(run.metrics for run in runs):
        return None
    if len(runs) == 1:
        fig = Figure(figsize=(8, 6))
        ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        _loss_axis(ax_loss, runs, runs[0].loss_keys())
        _lr_axis(ax_lr, runs)
        return _save(fig, png)
    keys = list(dict.fromkeys(k for run in runs for k in run.loss_keys()))
    keys = (["total"] if "total" in keys else []) + [k for k in keys if k != "total"]
    ncols, nrows = 2, math.ceil((len(keys) + 1) / 2)
    fig = Figure(figsize=(11, 3.2 * nrows))
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)  # (nrows * ncols,)
    for ax, key in zip(axes, keys):
        _loss_axis(ax, runs, [key], title=key)
    _lr_axis(axes[len(keys)], runs)
    axes[len(keys)].legend(fontsize=8)
    for ax in axes[len(keys) + 1:]:
        ax.set_axis_off()
    return _save(fig, png)


def plot_ap_history(runs: Sequence[RunData], png: Path) -> Optional[Path]:
    """AP, AP50 and AP75 (percent) over the evaluations of ``eval_history.jsonl``; ``None``
    when no run has an evaluation."""
    if not any(run.history_series("AP")[0] for run in runs):
        return None
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for i, run in enumerate(runs):
        for j, (key, style) in enumerate(_AP_STYLES.items()):
            its, vals = run.history_series(key)
            label = f"{run.label} {key}" if len(runs) > 1 else key
            ax.plot(its, [100 * v for v in vals], style, marker="o", markersize=3,
                    color=f"C{i if len(runs) > 1 else j}", label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("COCO AP (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, png)


def _pr_axis(ax, runs: Sequence[RunData], iou: str, legend: bool) -> None:
    for i, run in enumerate(runs):
        at = run.curves["iou"].get(iou) if run.curves else None
        if not at:
            continue
        recall = run.curves["recall"]
        if len(runs) == 1:
            many = len(at["per_class"]) > _MAX_CLASS_LEGEND
            for j, (name, p) in enumerate(at["per_class"].items()):
                if p is not None:
                    ax.plot(recall, p, linewidth=1, alpha=0.5 if many else 0.9,
                            color="0.6" if many else f"C{j}", label=None if many else name)
        key = {"0.5": "AP50", "0.75": "AP75"}.get(iou)
        ap = (run.eval or {}).get(key, -1) if key else -1
        if len(runs) == 1 and ap >= 0:
            ax.set_title(f"IoU {iou}: {key} {100 * ap:.1f} (mean of the classes, black)")
        if at["mean"] is not None:
            label = "mean" if len(runs) == 1 else (f"{run.label} ({key} {100 * ap:.1f})" if ap >= 0 else run.label)
            ax.plot(recall, at["mean"], linewidth=2.5, color="black" if len(runs) == 1 else f"C{i}", label=label)
    if not ax.get_title():
        ax.set_title(f"IoU {iou}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if legend:  # PR curves fall from the upper left: the upper right corner is free
        ax.legend(fontsize=7, loc="upper right", framealpha=0.9)


def plot_pr_curves(runs: Sequence[RunData], png: Path) -> Optional[Path]:
    """Precision-recall curves of the last evaluation (``pr_curves.json``, the evaluator's own
    interpolated precision) at IoU 0.5 and 0.75: per class and their mean for one run, the means
    for several; ``None`` when no run has curves."""
    if not any(run.curves for run in runs):
        return None
    fig = Figure(figsize=(11, 4.8))
    for k, (ax, iou) in enumerate(zip(fig.subplots(1, len(PR_IOUS)), PR_IOUS)):
        _pr_axis(ax, runs, str(iou), legend=len(runs) > 1 or k == len(PR_IOUS) - 1)
    return _save(fig, png)


def plot_per_class_ap(runs: Sequence[RunData], png: Path) -> Optional[Path]:
    """Horizontal bars of each class's AP (percent) in the last ``eval.json``, one bar per run;
    ``None`` when no run has per-class AP."""
    tables = [(run.eval or {}).get("per_class") or {} for run in runs]
    names = list(dict.fromkeys(n for t in tables for n in t))
    if not names:
        return None
    n = len(runs)
    fig = Figure(figsize=(8, min(60.0, 1.2 + 0.28 * len(names) * max(1.0, 0.7 * n))))
    ax = fig.subplots()
    height = 0.8 / n
    y = np.arange(len(names))  # (K,)
    for i, (run, table) in enumerate(zip(runs, tables)):
        vals = np.asarray([100 * max(table.get(c, -1), 0) for c in names])  # (K,)
        bars = ax.barh(y + (i - (n - 1) / 2) * height, vals, height=height, color=f"C{i}",
                       label=run.label if n > 1 else None)
        if n == 1:
            ax.bar_label(bars, labels=[f"{v:.1f}" if table.get(c, -1) >= 0 else "-" for v, c in zip(vals, names)],
                         fontsize=8, padding=2)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("AP (%)")
    ax.set_xlim(0, 105)
    ax.grid(alpha=0.3, axis="x")
    if n > 1:
        ax.legend(fontsize=8)
    return _save(fig, png)


_PLOTS: tuple[tuple[str, Callable[[Sequence[RunData], Path], Optional[Path]]], ...] = (
    (LOSS_PNG, plot_losses), (AP_PNG, plot_ap_history), (PR_PNG, plot_pr_curves), (PER_CLASS_PNG, plot_per_class_ap))


def write_plots(runs: Sequence[RunData], out_dir: str | Path) -> list[Path]:
    """Every plot that ``runs`` have data for, into ``out_dir``; the PNGs written."""
    out = Path(out_dir)
    return [png for name, plot in _PLOTS if (png := plot(runs, out / name)) is not None]


def write_run_plots(run_dir: str | Path) -> list[Path]:
    """The plots of one run, written into ``run_dir`` itself (``loss_curve.png``,
    ``ap_history.png``, ``pr_curves.png``, ``per_class_ap.png``, each when its files exist: a run
    without an evaluation gets its loss curves only). Never raises: a directory that is not (yet)
    a run gets nothing and a plot that fails is logged and skipped, so a finished training run
    is never failed by its plots."""
    path = Path(run_dir)
    if not is_run_dir(path):
        return []
    try:
        runs = [load_run(path)]
    except Exception as e:  # noqa: BLE001  (a by-product: warn, do not fail the run)
        logger.warning("no plots for %s: %s", path, e)
        return []
    written = []
    for name, plot in _PLOTS:
        try:
            png = plot(runs, path / name)
        except Exception as e:  # noqa: BLE001
            logger.warning("plot %s of %s failed: %s", name, path, e)
            continue
        if png is not None:
            written.append(png)
    return written


def plot_loss_curve(metrics_file: Path, png: Path) -> Optional[Path]:
    """The loss curve of :func:`plot_losses` from one ``metrics.jsonl`` file; ``None`` when it is
    missing or empty."""
    rows = read_jsonl(Path(metrics_file))
    return plot_losses([RunData(label=Path(metrics_file).parent.name, metrics=rows)], Path(png)) if rows else None


__all__ = ["DPI", "LOSS_PNG", "AP_PNG", "PR_PNG", "PER_CLASS_PNG", "plot_losses", "plot_ap_history",
           "plot_pr_curves", "plot_per_class_ap", "write_plots", "write_run_plots", "plot_loss_curve"]
