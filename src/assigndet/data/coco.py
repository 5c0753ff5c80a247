"""COCO-format detection dataset with the maskrcnn-benchmark conventions (SPEC §1.1-1.2).

The annotation file is parsed once and validated completely at construction (cheap); images are
loaded lazily through ``torchvision.datasets.CocoDetection`` and checked when they are read.
Targets are precomputed into flat NumPy arrays (boxes already converted, clipped and filtered),
which keeps DataLoader workers from touching millions of Python objects.

An item is ``(image, target)``: ``image`` uint8 ``(3, H, W)`` RGB at the original size (the model
resizes), ``target = dict(boxes=(G, 4) float32 xyxy, labels=(G,) int64 0-based, image_id=int,
orig_size=(H, W))``. The index may be ``(index, flip)``: the sampler decides horizontal flips so
that training is reproducible and resumable.
"""
from __future__ import annotations

import json
import logging
import math
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from faster_coco_eval import COCO
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import DatasetError

logger = logging.getLogger("assigndet")


class _TorchvisionCoco(torchvision.datasets.CocoDetection):
    """torchvision's CocoDetection over an already-parsed (and validated) annotation dict.

    Only the image part of the dict is indexed: targets come from :class:`CocoDetection`'s
    arrays, so the annotation objects need not stay alive in every worker.
    """

    def __init__(self, root: str, images_only: dict) -> None:
        # torchvision's __init__ would re-read the JSON with pycocotools; build the same state
        # from the validated dict instead (faster-coco-eval's COCO has pycocotools' API).
        torchvision.datasets.VisionDataset.__init__(self, root, transform=v2.PILToTensor())
        self.coco = COCO(images_only)
        self.ids = sorted(self.coco.imgs.keys())


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _load_json(ann_file: Path) -> dict:
    try:
        text = ann_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{ann_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DatasetError(f"{ann_file}: cannot read annotation file ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{ann_file}: malformed JSON at line {e.lineno} column {e.colno} "
                           f"(char {e.pos}): {e.msg}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{ann_file}: missing or non-list '{key}'")
    return data


def _has_int_id(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("id"), int) and not isinstance(entry.get("id"), bool)


def _parse_categories(categories: list, src: Path) -> dict[int, str]:
    """``{category id: name}``; ids must be unique integers, and there must be one at least."""
    names: dict[int, str] = {}
    for k, cat in enumerate(categories):
        if not _has_int_id(cat):
            raise DatasetError(f"{src}: category #{k} has no integer 'id': {cat!r}")
        if cat["id"] in names:
            raise DatasetError(f"{src}: duplicate category id {cat['id']}")
        names[cat["id"]] = str(cat.get("name", cat["id"]))
    if not names:
        raise DatasetError(f"{src}: no categories")
    return names


def _parse_images(entries: list, src: Path) -> dict[int, tuple[int, dict]]:
    """``{image id: (row in the JSON list, entry)}``, each with a file name and a positive integer size."""
    images: dict[int, tuple[int, dict]] = {}
    for k, img in enumerate(entries):
        if not _has_int_id(img):
            raise DatasetError(f"{src}: image #{k} has no integer 'id': {str(img)[:200]}")
        if img["id"] in images:
            raise DatasetError(f"{src}: duplicate image id {img['id']}")
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise DatasetError(f"{src}: image id {img['id']} has no 'file_name'")
        for key in ("width", "height"):
            v = img.get(key)
            if not _is_number(v) or v != int(v) or v <= 0:
                raise DatasetError(f"{src}: image {img['file_name']} (id {img['id']}) has an "
                                   f"invalid '{key}': {v!r}")
        images[img["id"]] = (k, img)
    return images


def _check_annotation(k: int, ann: Any, src: Path, images: dict[int, tuple[int, dict]],
                      labels: dict[int, int]) -> tuple[list[float], dict]:
    """The ``[x, y, w, h]`` box of annotation #``k`` and its image entry, or a DatasetError."""
    if not isinstance(ann, dict):
        raise DatasetError(f"{src}: annotation #{k} is not an object")
    aid = ann.get("id", f"#{k}")
    if ann.get("image_id") not in images:
        raise DatasetError(f"{src}: annotation id {aid} refers to unknown image_id "
                           f"{ann.get('image_id')!r}")
    img = images[ann["image_id"]][1]
    where = f"{src}: annotation id {aid} (image {img['file_name']})"
    if ann.get("category_id") not in labels:
        raise DatasetError(f"{where}: unknown category_id {ann.get('category_id')!r}")
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_number, bbox)):
        raise DatasetError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if not all(map(math.isfinite, (x, y, w, h))):
        raise DatasetError(f"{where}: bbox has non-finite values {bbox!r}")
    if w < 0 or h < 0:
        raise DatasetError(f"{where}: bbox has negative size {bbox!r}")
    if not ann.get("iscrowd", 0) and w > 0 and h > 0 and (
            x >= img["width"] or y >= img["height"] or x + w <= 0 or y + h <= 0):
        raise DatasetError(f"{where}: bbox {bbox!r} lies entirely outside the "
                           f"{img['width']}x{img['height']} image")
    return [x, y, w, h], img


def _group_annotations(annotations: list, src: Path, images: dict[int, tuple[int, dict]], labels: dict[int, int]
                       ) -> dict[int, list[tuple[list[float], int]]]:
    """``{image id: [([x, y, w, h], label), ...]}`` of the non-crowd annotations (crowd ones are
    validated, not kept)."""
    per_image: dict[int, list[tuple[list[float], int]]] = {i: [] for i in images}
    for k, ann in enumerate(annotations):
        xywh, _ = _check_annotation(k, ann, src, images, labels)
        if ann.get("iscrowd", 0):
            continue
        per_image[ann["image_id"]].append((xywh, labels[ann["category_id"]]))
    return per_image


def _to_xyxy(anns: list[tuple[list[float], int]], W: int, H: int, off: float
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """COCO boxes -> xyxy (``x2 = x + max(w - off, 0)``), clipped to ``[0, W - off] x [0, H - off]``,
    empty ones removed; returns ``(boxes (G', 4), labels (G',), number removed)``."""
    xywh = np.asarray([b for b, _ in anns], dtype=np.float64).reshape(-1, 4)  # (G, 4)
    xyxy = np.empty_like(xywh)
    xyxy[:, 0] = xywh[:, 0]
    xyxy[:, 1] = xywh[:, 1]
    xyxy[:, 2] = xywh[:, 0] + np.maximum(xywh[:, 2] - off, 0)
    xyxy[:, 3] = xywh[:, 1] + np.maximum(xywh[:, 3] - off, 0)
    xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, W - off)
    xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, H - off)
    ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])  # (G,)
    return xyxy[ok], np.asarray([lab for _, lab in anns], dtype=np.int64)[ok], int((~ok).sum())


class CocoDetection(torch.utils.data.Dataset):
    """A COCO detection dataset with category-id mapping, box conventions and a training filter.

    Args:
        image_root: directory holding the images (``file_name`` is relative to it).
        ann_file: COCO ``instances_*.json``.
        train: training set semantics: images are filtered (below) and ``skip_corrupt`` applies.
        offset: pixel convention (SPEC §1.1). COCO ``(x, y, w, h)`` becomes
            ``(x, y, x + max(w - offset, 0), y + max(h - offset, 0))``, boxes are clipped to
            ``[0, W - offset] x [0, H - offset]`` and flips map ``x1' = W - x2 - offset``.
            1.0 is faithful to the original repositories, 0.0 is modern.
        filter_empty: with ``train``, drop images that have no non-crowd annotation or whose
            every non-crowd box has ``w <= 1`` or ``h <= 1`` (SPEC §1.2). ``False`` keeps them
            (they train as all-background). Note: maskrcnn-benchmark applies this test to all
            annotations, crowd included, so it keeps the few crowd-only COCO images (with empty
            targets); here they are dropped.
        skip_corrupt: a missing/corrupt image is replaced by the next readable one (counted in
            ``num_skipped``, with a warning) instead of raising :class:`DatasetError`.

    Crowd annotations never enter the targets (evaluation reads the JSON file itself). After
    conversion and clipping, boxes with ``x2 <= x1`` or ``y2 <= y1`` are removed (SPEC §1.2; with
    ``offset=1`` this removes 1-pixel-wide boxes, as the original does).
    Errors (:class:`DatasetError`): missing paths, malformed JSON, malformed entries, boxes with
    negative or non-finite size or entirely outside their image; zero-size boxes are dropped
    silently (their count is logged).

    Attributes: ``category_ids`` (ascending COCO ids, label i <-> ``category_ids[i]``),
    ``class_names``, ``image_ids``, ``file_names``, ``image_sizes`` ((H, W) per index),
    ``aspect_ratios`` (h / w), ``group_ids`` (1 if h / w >= 1 else 0), ``num_skipped``.
    """

    def __init__(self, image_root: str | os.PathLike, ann_file: str | os.PathLike, *, train: bool,
                 offset: float = 1.0, filter_empty: bool = True, skip_corrupt: bool = False) -> None:
        self.image_root = Path(image_root)
        self.ann_file = Path(ann_file)
        self.train = bool(train)
        self.offset = float(offset)
        self.filter_empty = bool(filter_empty)
        self.skip_corrupt = bool(skip_corrupt)
        self.num_skipped = 0
        self._bad: set[int] = set()
        if not self.ann_file.is_file():
            raise DatasetError(f"annotation file not found: {self.ann_file}")
        if not self.image_root.is_dir():
            raise DatasetError(f"image_root is not a directory: {self.image_root}")
        data = _load_json(self.ann_file)
        self._build(data)
        images_only = {"images": [data["images"][i] for i in self._json_rows],
                       "annotations": [], "categories": data["categories"]}
        self._tv = _TorchvisionCoco(str(self.image_root), images_only)
        tv_pos = {img_id: k for k, img_id in enumerate(self._tv.ids)}
        self._tv_index = [tv_pos[i] for i in self.image_ids]

    # ------------------------------------------------------------------ construction
    def _build(self, data: dict) -> None:
        src = self.ann_file
        # 1. Categories -> contiguous labels in ascending id order.
        names = _parse_categories(data["categories"], src)
        self.category_ids: list[int] = sorted(names)
        self.class_names: list[str] = [names[c] for c in self.category_ids]
        self.category_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.category_ids)}
        # 2. Images.  3. Annotations, validated and grouped per image.
        images = _parse_images(data["images"], src)
        per_image = _group_annotations(data["annotations"], src, images, self.category_id_to_label)
        # 4. Training filter (SPEC §1.2), conversion to xyxy, clip, removal of empty boxes.
        keep_ids, boxes, labels, offsets = [], [], [], [0]
        num_filtered = num_dropped = 0
        for img_id in sorted(images):
            anns = per_image[img_id]
            if self.train and self.filter_empty and (
                    not anns or all(b[2] <= 1 or b[3] <= 1 for b, _ in anns)):
                num_filtered += 1
                continue
            img = images[img_id][1]
            xyxy, lab, dropped = _to_xyxy(anns, int(img["width"]), int(img["height"]), self.offset)
            num_dropped += dropped
            keep_ids.append(img_id)
            boxes.append(xyxy)
            labels.append(lab)
            offsets.append(offsets[-1] + len(lab))
        if num_filtered:
            logger.info("%s: %d of %d images without usable annotations left out of training",
                        src, num_filtered, len(images))
        if num_dropped:
            logger.info("%s: %d degenerate (empty after conversion/clipping) boxes dropped",
                        src, num_dropped)
        self._set_index(images, keep_ids, boxes, labels, offsets)

    def _set_index(self, images: dict[int, tuple[int, dict]], keep_ids: list[int], boxes: list[np.ndarray],
                   labels: list[np.ndarray], offsets: list[int]) -> None:
        """The per-item attributes and the flat target arrays of the kept images."""
        self.image_ids: list[int] = keep_ids
        self._json_rows = [images[i][0] for i in keep_ids]
        self.file_names: list[str] = [images[i][1]["file_name"] for i in keep_ids]
        self.image_sizes: list[tuple[int, int]] = [
            (int(images[i][1]["height"]), int(images[i][1]["width"])) for i in keep_ids]
        self.aspect_ratios: list[float] = [h / w for h, w in self.image_sizes]
        self.group_ids: list[int] = [1 if r >= 1 else 0 for r in self.aspect_ratios]
        self._boxes = (np.concatenate(boxes) if boxes else np.zeros((0, 4))).astype(np.float32)
        self._labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        self._offsets = np.asarray(offsets, dtype=np.int64)

    # ------------------------------------------------------------------ access
    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def label_to_category_id(self, labels: Tensor) -> Tensor:
        """0-based contiguous labels (any shape) -> COCO category ids (int64, same shape)."""
        table = torch.as_tensor(self.category_ids, dtype=torch.int64, device=labels.device)
        return table[labels.long()]

    def get_target(self, index: int, flip: bool = False) -> dict:
        """The target of item ``index`` without reading its image."""
        H, W = self.image_sizes[index]
        lo, hi = self._offsets[index], self._offsets[index + 1]
        boxes = torch.from_numpy(self._boxes[lo:hi].copy())  # (G, 4)
        if flip:
            x1 = W - boxes[:, 2] - self.offset
            x2 = W - boxes[:, 0] - self.offset
            boxes[:, 0], boxes[:, 2] = x1, x2
        return {"boxes": boxes, "labels": torch.from_numpy(self._labels[lo:hi].copy()),
                "image_id": self.image_ids[index], "orig_size": (H, W)}

    def _read_image(self, index: int) -> Tensor:
        path = self.image_root / self.file_names[index]
        try:
            image, _ = self._tv[self._tv_index[index]]  # (3, H, W) uint8
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
            raise DatasetError(f"cannot read image {path} (image id {self.image_ids[index]}): "
                               f"{reason}") from None
        if tuple(image.shape[1:]) != self.image_sizes[index]:
            raise DatasetError(f"image {path} (image id {self.image_ids[index]}) is "
                               f"{image.shape[2]}x{image.shape[1]} but {self.ann_file.name} says "
                               f"{self.image_sizes[index][1]}x{self.image_sizes[index][0]}")
        return image

    def __getitem__(self, index: int | tuple[int, bool]) -> tuple[Tensor, dict]:
        flip = False
        if isinstance(index, tuple):
            index, flip = index
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        image = None
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            if i in self._bad:
                continue
            try:
                image = self._read_image(i)
            except DatasetError as e:
                if not self.skip_corrupt:
                    raise
                self._bad.add(i)
                self.num_skipped += 1
                logger.warning("skipping unreadable image (%d skipped so far): %s", self.num_skipped, e)
                continue
            index = i
            break
        if image is None:
            raise DatasetError(f"no readable image left in {self.image_root}")
        target = self.get_target(index, bool(flip))
        if flip:
            image = F.horizontal_flip(image)
        return image, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {self.num_classes} classes, "
                f"ann_file={str(self.ann_file)!r}, train={self.train}, offset={self.offset})")


__all__ = ["CocoDetection", "DatasetError"]
