"""The explorer's figures (matplotlib's object API, no pyplot state): an overview of every GT's
positives per method, and per GT one figure with a column per method: its positive anchors on
the image, their count per FPN level, and the method's decision (ATSS: candidate IoUs with mean
and threshold; PAA: candidate scores with the two fitted Gaussians and the cut; Dynamic ATSS:
candidate combined IoUs with the threshold). Everything is drawn from the per-GT records
(:func:`~.assigners.gt_records`), in the model's input pixels (the resized image)."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from .assigners import METHOD_TITLES, METHODS

#: figure resolution (dots per inch)
DPI = 72
#: one colour per GT (cycled), chosen to stand out on photographs and on each other
_GT_PALETTE = ("#e6194b", "#ffe119", "#3cb44b", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
               "#ffffff")
_LEVEL_COLORS = colormaps["Set1"]


def _gt_color(i: int) -> str:
    return _GT_PALETTE[i % len(_GT_PALETTE)]


def save_png(fig: Figure, path: Path) -> None:
    """The figure as a 256-colour PNG (a third of the size of a full-colour one, same look)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def _box(ax, box, color, lw=1.5, ls="-") -> None:
    x1, y1, x2, y2 = box
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=lw, linestyle=ls))


def overview_figure(image: np.ndarray, gts: list[dict[str, Any]], names: list[str], path: Path) -> None:
    """Every GT (its colour) with its positive anchors' centres, one panel per method."""
    fig = Figure(figsize=(5.0 * len(METHODS), 5.0 * image.shape[0] / image.shape[1] + 0.8), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(1, len(METHODS))
    for ax, m in zip(axes, METHODS):
        _show(ax, image)
        total = 0
        for g in gts:
            color = _gt_color(g["index"])
            _box(ax, g["box"], color, lw=2)
            ax.text(g["box"][0], g["box"][1], str(g["index"]), color="black", fontsize=8, va="bottom",
                    bbox={"facecolor": color, "edgecolor": "none", "pad": 1})
            pos = np.asarray(g[m]["positive_boxes"]).reshape(-1, 4)
            total += len(pos)
            if len(pos):
                ax.scatter((pos[:, 0] + pos[:, 2]) / 2, (pos[:, 1] + pos[:, 3]) / 2, s=18, color=color,
                           edgecolors="white", linewidths=0.6, zorder=3)
        ax.set_title(f"{METHOD_TITLES[m]}: {total} positives for {len(gts)} GTs", fontsize=11)
    fig.suptitle("positive anchor centres (dots) in each GT's colour, on the model's input image", fontsize=10)
    save_png(fig, path)


def _positives_panel(ax, image: np.ndarray, g: dict, rec: dict, levels: list[str]) -> None:
    _show(ax, image)
    x1, y1, x2, y2 = g["box"]
    margin = max(x2 - x1, y2 - y1, 32) * 0.6
    for b, lvl in zip(rec["positive_boxes"], _positive_levels(rec, levels)):
        _box(ax, b, _LEVEL_COLORS(lvl % 9), lw=1.0)
    _box(ax, g["box"], "white", lw=2.5)
    _box(ax, g["box"], "black", lw=1.2, ls="--")
    ax.set_xlim(max(x1 - margin, 0), min(x2 + margin, image.shape[1]))
    ax.set_ylim(min(y2 + margin, image.shape[0]), max(y1 - margin, 0))


def _positive_levels(rec: dict, levels: list[str]) -> list[int]:
    """The level index of each positive anchor (from the per-level counts: anchors are level-ordered)."""
    return [i for i, name in enumerate(levels) for _ in range(rec["per_level"][name])]


def _levels_panel(ax, rec: dict, levels: list[str]) -> None:
    cand = np.bincount(np.asarray(rec["candidate_levels"], dtype=np.int64), minlength=len(levels))[: len(levels)]
    pos = [rec["per_level"][n] for n in levels]
    x = np.arange(len(levels))
    ax.bar(x, cand, color="0.85", label="candidates")
    ax.bar(x, pos, color=[_LEVEL_COLORS(i % 9) for i in x], label="positives")
    for xi, p in zip(x, pos):
        ax.text(xi, p, str(p), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, levels)
    ax.set_ylabel("anchors")
    ax.legend(fontsize=8, loc="best")


def _candidates_panel(ax, values: list[float], rec: dict, threshold, ylabel: str, extra: str,
                      levels: list[str]) -> None:
    """Candidate values by level and the threshold: the GT's final positives filled in their level
    colour; above the threshold but centre outside the GT, or won by another GT, marked apart."""
    lv = np.asarray(rec["candidate_levels"], dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    final = np.isin(np.asarray(rec["candidates"], dtype=np.int64), np.asarray(rec["positive_anchors"], dtype=np.int64))
    above = np.asarray(rec["candidate_above_threshold"], dtype=bool)
    outside = above & ~np.asarray(rec["candidate_centre_inside"], dtype=bool)
    taken = np.asarray(rec["candidate_positive"], dtype=bool) & ~final
    x = lv + (np.arange(len(v)) % 9 - 4) * 0.06  # jittered level
    rest = ~(final | outside | taken)
    ax.scatter(x[rest], v[rest], s=16, facecolors="none", edgecolors="0.5", label="candidate")
    ax.scatter(x[final], v[final], s=22, c=[_LEVEL_COLORS(i % 9) for i in lv[final]], label="positive")
    if outside.any():
        ax.scatter(x[outside], v[outside], s=26, marker="x", color="black", label="centre outside the GT")
    if taken.any():
        ax.scatter(x[taken], v[taken], s=26, marker="^", color="0.3", label="positive for another GT")
    if threshold is not None:
        ax.axhline(threshold, color="red", lw=1.2, label=f"threshold {threshold:.3f}")
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(len(levels)), levels)
    ax.set_title(extra, fontsize=9)
    ax.legend(fontsize=7, loc="best")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _atss_panel(ax, rec: dict, levels: list[str]) -> None:
    if rec["iou_mean"] is not None:
        ax.axhline(rec["iou_mean"], color="0.3", lw=1, ls="--", label=f"mean {rec['iou_mean']:.3f}")
    _candidates_panel(ax, rec["candidate_iou"], rec, rec["threshold"], "IoU(anchor, GT)",
                      f"threshold = mean {_fmt(rec['iou_mean'])} + std {_fmt(rec['iou_std'])}", levels)


def _dynamic_panel(ax, rec: dict, levels: list[str]) -> None:
    _candidates_panel(ax, rec["candidate_combined_iou"], rec, rec["threshold"], "IoU(pred) + IoU(anchor)",
                      f"thr = mean P {_fmt(rec['pred_iou_mean'])} + mean Q {_fmt(rec['anchor_iou_mean'])} "
                      f"+ std P {_fmt(rec['pred_iou_std'])} + std Q {_fmt(rec['anchor_iou_std'])}", levels)


def _paa_panel(ax, rec: dict, levels: list[str]) -> None:
    s = np.asarray(rec["candidate_scores"], dtype=np.float64)
    if len(s) == 0:
        ax.text(0.5, 0.5, "no candidate\n(no first-stage match)", ha="center", va="center", transform=ax.transAxes)
        return
    counts, edges, _ = ax.hist(s, bins=max(5, min(20, len(s))), color="0.8", label="candidate scores")
    ok = np.asarray(rec["candidate_positive"], dtype=bool)
    ax.plot(s[ok], np.zeros(ok.sum()), "|", color="tab:green", ms=14, mew=2, label="positive")
    ax.plot(s[~ok], np.zeros((~ok).sum()), "|", color="0.4", ms=10, label="negative")
    if rec["gmm_fitted"] and None not in rec["gmm_variances"]:
        xs = np.linspace(s.min() - 0.1 * np.ptp(s) - 1e-3, s.max() + 0.1 * np.ptp(s) + 1e-3, 300)
        scale = len(s) * (edges[1] - edges[0])  # density -> counts per bin
        for k, (mu, var, w, color) in enumerate(zip(rec["gmm_means"], rec["gmm_variances"], rec["gmm_weights"],
                                                    ("tab:green", "tab:red"))):
            pdf = w * np.exp(-0.5 * (xs - mu) ** 2 / var) / math.sqrt(2 * math.pi * var)
            ax.plot(xs, pdf * scale, color=color, lw=1.5,
                    label=f"{'fg' if k == 0 else 'bg'}: mean {mu:.3f}, var {var:.3g}, w {w:.2f}")
    if rec["cut_score"] is not None:
        ax.axvline(rec["cut_score"], color="black", lw=1.2, ls="--", label=f"cut {rec['cut_score']:.3f}")
    fitted = f"{rec['gmm_n_iter']} EM iterations" if rec["gmm_fitted"] else "GMM not fitted (< 2 candidates)"
    ax.set_title(f"{rec['num_candidates']} candidates, {fitted}", fontsize=9)
    ax.set_xlabel("anchor score (focal + 1 - GIoU; lower is better)")
    ax.set_ylabel("candidates")
    ax.legend(fontsize=7, loc="best")


_DECISION = {"atss": _atss_panel, "paa": _paa_panel, "dynamic_atss": _dynamic_panel}


def gt_figure(image: np.ndarray, g: dict[str, Any], name: str, levels: list[str], path: Path) -> None:
    """One GT: per method (columns) its positives on the image, per level, and the decision."""
    fig = Figure(figsize=(5.0 * len(METHODS), 11.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(3, len(METHODS), height_ratios=[3, 1.3, 2.2])
    for col, m in enumerate(METHODS):
        rec = g[m]
        _positives_panel(axes[0, col], image, g, rec, levels)
        per = ", ".join(f"{n} {rec['per_level'][n]}" for n in levels if rec["per_level"][n])
        axes[0, col].set_title(f"{METHOD_TITLES[m]}: {rec['positives']} positives" + (f" ({per})" if per else ""),
                               fontsize=11)
        _levels_panel(axes[1, col], rec, levels)
        _DECISION[m](axes[2, col], rec, levels)
    fig.suptitle(f"GT {g['index']} ({name}) box {g['box']} in the model's input pixels", fontsize=12)
    save_png(fig, path)
