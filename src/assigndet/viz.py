"""Pictures: images read for prediction, detections drawn on them, the loss curves of a training run.

Library code for the command line (``assigndet predict`` and ``demo``) and for notebooks; it
knows the detector output format (``dict(boxes, scores, labels)``) and the ``metrics.jsonl``
rows of :mod:`assigndet.monitor`, nothing of the engine.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError
from torchvision.utils import draw_bounding_boxes

from .errors import InputError

#: the files ``assigndet predict DIR`` reads from a directory
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: ``metrics.jsonl`` columns that are not losses
_NOT_LOSSES = ("iteration", "lr", "time", "data_time")


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """The image files named by ``inputs``: files as given, directories expanded to their image
    files (sorted); a missing path or an image-less directory is an InputError."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise InputError(f"no image files in directory {p}")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise InputError(f"image not found: {p}")
    return paths


def read_image(path: Path) -> torch.Tensor:
    """RGB uint8 (3, H, W) via Pillow (EXIF orientation ignored, like the COCO loaders); an
    unreadable file is an :class:`~assigndet.errors.InputError` naming it."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))  # (H, W, 3)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise InputError(f"cannot read image {path}: {reason}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def draw_predictions(image: torch.Tensor, pred: dict, class_names: Sequence[str], score_thresh: float
                     ) -> torch.Tensor:
    """``image`` uint8 (3, H, W) with the boxes scoring ≥ ``score_thresh`` drawn and labelled
    ``"<class name> <score>"`` (boxes clamped into the image)."""
    keep = pred["scores"] >= score_thresh
    boxes = pred["boxes"][keep].float()
    labels = [f"{class_names[int(c)]} {float(s):.2f}" for c, s in zip(pred["labels"][keep], pred["scores"][keep])]
    if len(boxes) == 0:
        return image
    h, w = image.shape[-2:]
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    return draw_bounding_boxes(image, boxes, labels=labels, width=2)


def write_image(image: torch.Tensor, path: Path) -> None:
    """Save a uint8 (3, H, W) RGB image (format from the suffix), creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(path)  # (H, W, 3)


def plot_loss_curve(metrics_file: Path, png: Path) -> Optional[Path]:
    """Loss curves (every loss and the total, log scale) from ``metrics.jsonl`` → PNG; ``None``
    when there is no file or no row."""
    if not metrics_file.is_file():
        return None
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    keys = [k for k in rows[0] if k not in _NOT_LOSSES]
    fig = Figure(figsize=(7, 4))  # no pyplot: no global backend or figure registry
    ax = fig.subplots()
    its = [r["iteration"] for r in rows]
    for k in keys:
        ax.plot(its, [r.get(k, float("nan")) for r in rows], label=k, linewidth=2 if k == "total" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    return png


__all__ = ["IMAGE_SUFFIXES", "collect_images", "read_image", "draw_predictions", "write_image", "plot_loss_curve"]
