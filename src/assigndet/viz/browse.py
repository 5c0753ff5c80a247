"""A look at a detection dataset (``assigndet browse``): ground truth drawn on sample images,
the number of boxes per class, the box-size histogram, gathered in an ``index.html``.

Everything is read through :class:`~assigndet.data.CocoDetection` (its targets: crowd boxes
are not in them, boxes are xyxy in the dataset's pixel convention), so what is shown is what
training sees.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..data import CocoDetection
from .draw import class_color, draw_ground_truth
from .images import write_image
from .plots import DPI

#: COCO's object-size boundaries, on sqrt(area) in pixels (area 32² and 96²)
SIZE_BOUNDS = (32.0, 96.0)
CLASS_COUNTS_PNG, BOX_SIZES_PNG = "class_counts.png", "box_sizes.png"
SUMMARY_JSON, INDEX_HTML = "summary.json", "index.html"


def _box_sides(dataset: CocoDetection) -> tuple[np.ndarray, np.ndarray]:
    """(labels (B,), sqrt(w * h) (B,)) of every box of ``dataset`` (no image is read)."""
    labels, sides = [], []
    for i in range(len(dataset)):
        t = dataset.get_target(i)
        wh = (t["boxes"][:, 2:] - t["boxes"][:, :2] + dataset.offset).clamp(min=0).numpy()  # (G, 2)
        labels.append(t["labels"].numpy())
        sides.append(np.sqrt(wh[:, 0] * wh[:, 1]))
    return (np.concatenate(labels) if labels else np.zeros(0, np.int64),
            np.concatenate(sides) if sides else np.zeros(0))


def dataset_summary(dataset: CocoDetection) -> dict[str, Any]:
    """Counts of ``dataset``: images, boxes, boxes and images per class, boxes per COCO size
    (small < 32² ≤ medium < 96² ≤ large, on the box area), and the box sides (sqrt area)."""
    labels, sides = _box_sides(dataset)
    per_image = [set(dataset.get_target(i)["labels"].tolist()) for i in range(len(dataset))]
    small, large = SIZE_BOUNDS
    return {
        "ann_file": str(dataset.ann_file), "image_root": str(dataset.image_root),
        "num_images": len(dataset), "num_boxes": int(len(labels)),
        "images_without_boxes": sum(1 for s in per_image if not s),
        "boxes_per_class": {n: int((labels == k).sum()) for k, n in enumerate(dataset.class_names)},
        "images_per_class": {n: sum(1 for s in per_image if k in s) for k, n in enumerate(dataset.class_names)},
        "boxes_per_size": {"small": int((sides < small).sum()),
                           "medium": int(((sides >= small) & (sides < large)).sum()),
                           "large": int((sides >= large).sum())},
        "box_sides": [round(float(s), 2) for s in sides],
    }


def plot_class_counts(summary: dict[str, Any], png: Path) -> Path:
    """Bars of the boxes per class (images holding the class in the label)."""
    boxes, images = summary["boxes_per_class"], summary["images_per_class"]
    names = list(boxes)
    fig = Figure(figsize=(8, min(40.0, 1.2 + 0.3 * len(names))))
    ax = fig.subplots()
    bars = ax.barh(np.arange(len(names)), [boxes[n] for n in names],
                   color=[tuple(c / 255 for c in class_color(k)) for k in range(len(names))])
    ax.bar_label(bars, labels=[f"{boxes[n]} ({images[n]} img)" for n in names], fontsize=8, padding=2)
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("boxes")
    ax.set_xlim(0, 1.25 * max([1, *boxes.values()]))
    ax.set_title(f"{summary['num_boxes']} boxes in {summary['num_images']} images")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(png, dpi=DPI)
    return png


def plot_box_sizes(summary: dict[str, Any], png: Path) -> Path:
    """Histogram of sqrt(box area) with COCO's small / medium / large boundaries."""
    sides = np.asarray(summary["box_sides"], dtype=np.float64)  # (B,)
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    top = max(128.0, float(sides.max()) * 1.05 if len(sides) else 0.0)
    ax.hist(sides, bins=np.linspace(0, top, 41), color="C0", edgecolor="white")
    counts = summary["boxes_per_size"]
    for x in SIZE_BOUNDS:
        ax.axvline(x, color="C3", linestyle="--", linewidth=1)
    for name, x in zip(("small", "medium", "large"), (SIZE_BOUNDS[0] / 2, sum(SIZE_BOUNDS) / 2,
                                                      (SIZE_BOUNDS[1] + top) / 2)):
        ax.text(x, 0.97, f"{name}\n{counts[name]}", transform=ax.get_xaxis_transform(), ha="center", va="top",
                fontsize=9, color="C3", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.set_xlim(0, top)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("sqrt(box area) (pixels)")
    ax.set_ylabel("boxes")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=DPI)
    return png


def sample_indices(num_items: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(num_items)`` (all of them when ``n >= num_items``)."""
    if n >= num_items:
        return list(range(num_items))
    return sorted({int(round(v)) for v in np.linspace(0, num_items - 1, n)})


def _html(summary: dict[str, Any], samples: Sequence[dict[str, Any]]) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(n)}</td><td>{b}</td><td>{summary['images_per_class'][n]}</td></tr>"
                   for n, b in summary["boxes_per_class"].items())
    sizes = ", ".join(f"{k} {v}" for k, v in summary["boxes_per_size"].items())
    figs = "".join(f'<figure><img src="{esc(s["output"])}" width="360"><figcaption>{esc(s["file_name"])}: '
                   f'{s["num_boxes"]} boxes</figcaption></figure>' for s in samples)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(summary['ann_file'])}</title>"
            "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:.5em}"
            "td,th{padding:.2em .8em;text-align:left}</style></head><body>"
            f"<h1>{esc(summary['ann_file'])}</h1><p>{summary['num_images']} images "
            f"({summary['images_without_boxes']} without boxes), {summary['num_boxes']} boxes; {sizes}.</p>"
            f"<table><tr><th>class</th><th>boxes</th><th>images</th></tr>{rows}</table>"
            f'<p><img src="{CLASS_COUNTS_PNG}"> <img src="{BOX_SIZES_PNG}"></p>'
            f"<h2>{len(samples)} sample images</h2>{figs}</body></html>\n")


def write_browse(dataset: CocoDetection, out_dir: str | Path, *, n: int = 8) -> dict[str, Any]:
    """Into ``out_dir``: ``images/<image id>.jpg`` (ground truth of ``n`` images spread over the
    dataset), ``class_counts.png``, ``box_sizes.png``, ``summary.json`` and ``index.html``;
    returns the summary (with the drawn ``samples``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = dataset_summary(dataset)
    samples = []
    for i in sample_indices(len(dataset), n):
        image, target = dataset[i]
        name = f"images/{int(target['image_id'])}.jpg"
        write_image(draw_ground_truth(image, target, dataset.class_names), out / name)
        samples.append({"image_id": int(target["image_id"]), "file_name": dataset.file_names[i], "output": name,
                        "num_boxes": int(len(target["labels"]))})
    plot_class_counts(summary, out / CLASS_COUNTS_PNG)
    plot_box_sizes(summary, out / BOX_SIZES_PNG)
    summary["samples"] = samples
    (out / SUMMARY_JSON).write_text(json.dumps({k: v for k, v in summary.items() if k != "box_sides"}, indent=1) + "\n")
    (out / INDEX_HTML).write_text(_html(summary, samples))
    return summary


__all__ = ["SIZE_BOUNDS", "dataset_summary", "plot_class_counts", "plot_box_sizes", "sample_indices", "write_browse"]
