"""What ``assigndet explain`` reads: an image with a boxes file, or one image of a COCO-format
dataset; every mistake is one :class:`~assigndet.errors.InputError` / ``DatasetError`` line that
names the file, the box or the image id.

The boxes file is JSON: a list (or ``{"boxes": [...]}``) of objects, in the image's pixels::

    [{"box": [x1, y1, x2, y2], "label": 0},
     {"bbox": [x, y, w, h], "label": "circle"}]

``box`` is corner form (x2 > x1, y2 > y1); ``bbox`` is COCO's ``[x, y, w, h]``, converted as the
COCO loader does (``x2 = x + max(w - offset, 0)`` with the model's pixel offset). ``label`` is a
0-based class index or a class name (of the weights' metadata, else of the dataset); it defaults
to 0 and matters to PAA only (its anchor scores use the class). Every box must lie inside the
image.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from ..data import CocoDetection
from ..errors import InputError
from ..viz.images import read_image


@dataclass
class Sample:
    """One image and its ground truth in the image's own pixels."""

    image: Tensor  # (3, H, W) uint8
    boxes: Tensor  # (G, 4) float32 xyxy
    labels: Tensor  # (G,) int64
    source: str  # the image file
    class_names: Optional[list[str]] = None  # of the dataset, when read from one
    image_id: Optional[int] = None


def _label(value: Any, names: Optional[Sequence[str]], num_classes: int, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"{where}: label must be a class index or a class name, got {value!r}")
    if isinstance(value, str):
        if names is None or value not in names:
            known = f"; known: {', '.join(names)}" if names else " (no class names known: give the index)"
            raise InputError(f"{where}: unknown class name {value!r}{known}")
        return list(names).index(value)
    if not 0 <= value < num_classes:
        raise InputError(f"{where}: label {value} outside 0..{num_classes - 1}")
    return value


def _corners(entry: dict, offset: float, where: str) -> list[float]:
    if "box" in entry:
        key = "box"
    elif "bbox" in entry:
        key = "bbox"
    else:
        raise InputError(f"{where}: needs \"box\": [x1, y1, x2, y2] or \"bbox\": [x, y, w, h]")
    v = entry[key]
    if not (isinstance(v, list) and len(v) == 4 and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                        for c in v)):
        raise InputError(f"{where}: \"{key}\" must be a list of 4 numbers, got {v!r}")
    if key == "box":
        return [float(c) for c in v]
    x, y, w, h = (float(c) for c in v)
    if w <= 0 or h <= 0:
        raise InputError(f"{where}: \"bbox\" width and height must be positive, got {v!r}")
    return [x, y, x + max(w - offset, 0.0), y + max(h - offset, 0.0)]


def _check_inside(box: list[float], width: int, height: int, where: str) -> None:
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise InputError(f"{where}: box {box} is empty (need x2 > x1 and y2 > y1)")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise InputError(f"{where}: box {box} lies outside the {width}x{height} image")


def read_boxes(path: str | Path, width: int, height: int, *, names: Optional[Sequence[str]], num_classes: int,
               offset: float) -> tuple[Tensor, Tensor]:
    """The boxes file (module docstring) -> boxes (G, 4) float32 and labels (G,) int64."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"boxes file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read boxes file {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("boxes"), list):
        data = data["boxes"]
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: expected a non-empty list of {{\"box\": [x1, y1, x2, y2], \"label\": ...}}")
    boxes, labels = [], []
    for i, entry in enumerate(data):
        where = f"{path}: box {i}"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected an object with \"box\" or \"bbox\", got {entry!r}")
        box = _corners(entry, offset, where)
        _check_inside(box, width, height, where)
        boxes.append(box)
        labels.append(_label(entry.get("label"), names, num_classes, where))
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


def image_with_boxes(image: str | Path, boxes: str | Path, *, names: Optional[Sequence[str]], num_classes: int,
                     offset: float) -> Sample:
    """An image file and its boxes file."""
    path = Path(image)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    img = read_image(path)  # InputError naming the file when unreadable
    b, lab = read_boxes(boxes, img.shape[2], img.shape[1], names=names, num_classes=num_classes, offset=offset)
    return Sample(img, b, lab, str(path))


def dataset_image(cfg, image_dir: str | Path, ann_file: str | Path, image_id: int) -> Sample:
    """Image ``image_id`` of the COCO-format dataset ``ann_file`` (images under ``image_dir``),
    with its non-crowd annotations in the model's pixel convention."""
    ds = CocoDetection(image_dir, ann_file, train=False, offset=cfg.model.offset)  # DatasetError naming the file
    if image_id not in ds.image_ids:
        ids = ds.image_ids
        shown = f"{min(ids)}..{max(ids)}" if ids else "none"
        raise InputError(f"image id {image_id} is not in {ann_file} ({len(ids)} images, ids {shown})")
    index = ds.image_ids.index(image_id)
    image, target = ds[index]  # DatasetError when the file is unreadable
    if len(target["boxes"]) == 0:
        raise InputError(f"image id {image_id} of {ann_file} has no (non-crowd) annotation to explain")
    return Sample(image, target["boxes"], target["labels"], str(Path(image_dir) / ds.file_names[index]),
                  list(ds.class_names), image_id)
