"""COCO-format detection dataset with the maskrcnn-benchmark conventions (SPEC §1.1-1.2).

The annotation file is parsed once and validated completely at construction (cheap,
:mod:`~assigndet.data.cocojson`); images are read lazily by :func:`~assigndet.data.image.read_rgb`'s
rules (transparency composited on white, 16-bit scaled) and checked when they are read.
Targets are precomputed into flat NumPy arrays (boxes already converted, clipped and filtered),
which keeps DataLoader workers from touching millions of Python objects.

An item is ``(image, target)``: ``image`` uint8 ``(3, H, W)`` RGB at the original size (the model
resizes), ``target = dict(boxes=(G, 4) float32 xyxy, labels=(G,) int64 0-based, image_id=int,
orig_size=(H, W))``. The index may be ``(index, flip)`` or ``(index, flip, short side)``: the
sampler decides horizontal flips and training scales so that training is reproducible, resumable
and the same in any number of processes; the short side comes back as ``target["min_size"]``,
which the model's transform then uses.
"""
from __future__ import annotations

import logging
import operator
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from ..errors import DatasetError
from .cocojson import group_annotations, load_json, parse_categories, parse_images
from .image import DECODE_ERRORS, open_rgb, unreadable_reason
from .sampler import worker_safe

logger = logging.getLogger("assigndet")


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


def _empty_reason(src: Path, num_images: int, num_filtered: int) -> str:
    if num_images == 0:
        return f"{src}: no training images: the file lists no images"
    return (f"{src}: no training images left: all {num_images} images have no usable annotation (a non-crowd "
            f"box wider and taller than 1 px) and the training filter drops them (data.filter_empty=false "
            f"keeps them as background-only images)")


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
    Errors (:class:`DatasetError`): missing paths, malformed JSON, malformed entries, duplicate
    ids, boxes with negative or non-finite size or entirely outside their image, a training set
    left empty by the filter; zero-size boxes are dropped (their count is logged, one line per
    file). Inside a DataLoader worker an image error comes back to the loader as data, which
    re-raises it as the same one-line DatasetError (:class:`~assigndet.data.sampler.WorkerFailure`).

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
        self._build(load_json(self.ann_file))

    # ------------------------------------------------------------------ construction
    def _build(self, data: dict) -> None:
        src = self.ann_file
        # 1. Categories -> contiguous labels in ascending id order.
        names = parse_categories(data["categories"], src)
        self.category_ids: list[int] = sorted(names)
        self.class_names: list[str] = [names[c] for c in self.category_ids]
        self.category_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.category_ids)}
        # 2. Images.  3. Annotations, validated and grouped per image.
        images = parse_images(data["images"], src)
        per_image = group_annotations(data["annotations"], src, images, self.category_id_to_label)
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
            logger.warning("%s: %d degenerate boxes (x2 <= x1 or y2 <= y1 after conversion and clipping) dropped",
                           src, num_dropped)
        if self.train and not keep_ids:
            raise DatasetError(_empty_reason(src, len(images), num_filtered))
        self._set_index(images, keep_ids, boxes, labels, offsets)

    def _set_index(self, images: dict[int, tuple[int, dict]], keep_ids: list[int], boxes: list[np.ndarray],
                   labels: list[np.ndarray], offsets: list[int]) -> None:
        """The per-item attributes and the flat target arrays of the kept images."""
        self.image_ids: list[int] = keep_ids
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

    def missing_files(self) -> list[int]:
        """Indices whose image file does not exist (a stat per image: cheap, no decoding)."""
        return [i for i, name in enumerate(self.file_names) if not (self.image_root / name).is_file()]

    def mark_unreadable(self, indices: list[int]) -> None:
        """Known-bad images, never read (with ``skip_corrupt``, replaced by the next readable one)."""
        self._bad.update(indices)
        self.num_skipped += len(indices)

    def _read_image(self, index: int) -> Tensor:
        path = self.image_root / self.file_names[index]
        try:
            arr = open_rgb(path)  # (H, W, 3) uint8
        except DECODE_ERRORS as e:
            raise DatasetError(f"cannot read image {path} (image id {self.image_ids[index]}): "
                               f"{unreadable_reason(e)}") from None
        image = torch.from_numpy(arr).permute(2, 0, 1)  # (3, H, W)
        if tuple(image.shape[1:]) != self.image_sizes[index]:
            raise DatasetError(f"image {path} (image id {self.image_ids[index]}) is "
                               f"{image.shape[2]}x{image.shape[1]} but {self.ann_file.name} says "
                               f"{self.image_sizes[index][1]}x{self.image_sizes[index][0]}")
        return image

    @worker_safe
    def __getitem__(self, index: int | tuple) -> tuple[Tensor, dict]:
        flip, min_size = False, None
        if isinstance(index, tuple):
            index, flip, min_size = (*index, None)[:3]
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
        if min_size is not None:
            target["min_size"] = int(min_size)
        if flip:
            image = F.horizontal_flip(image)
        return image, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {self.num_classes} classes, "
                f"ann_file={str(self.ann_file)!r}, train={self.train}, offset={self.offset})")


__all__ = ["CocoDetection", "DatasetError"]
