"""The datasets a :class:`~assigndet.config.Config` names: paths of its splits and the
:class:`~assigndet.data.coco.CocoDetection` built from them, with the cheap part of
``assigndet data check`` (JSON, ids, boxes, every image file exists) done before training starts."""
from __future__ import annotations

import logging
from pathlib import Path

from ..config import Config, DataConfig
from ..errors import DatasetError
from .coco import CocoDetection

logger = logging.getLogger("assigndet")


def dataset_paths(data: DataConfig, *, train: bool) -> tuple[Path, Path]:
    """``(image directory, annotation file)`` of the training or validation split of ``data``
    (``cfg.data``); each path is relative to ``data.root`` unless it is absolute."""
    images, ann = (data.train_images, data.train_ann) if train else (data.val_images, data.val_ann)
    return _under(data.root, images), _under(data.root, ann)


def _under(root: str, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def check_files(dataset: CocoDetection) -> None:
    """Every image file of ``dataset`` exists (one stat each, no decoding): a DatasetError naming the
    first missing one and the count, or -- with ``skip_corrupt`` -- a warning, the missing ones
    then being skipped. An empty split is an error too."""
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.ann_file}: the split has no images")
    missing = dataset.missing_files()
    if not missing:
        return
    first = missing[0]
    what = (f"{dataset.ann_file}: {len(missing)} of {len(dataset)} image files missing under {dataset.image_root}, "
            f"first {dataset.file_names[first]} (image id {dataset.image_ids[first]})")
    if not (dataset.skip_corrupt and len(missing) < len(dataset)):
        raise DatasetError(f"{what}; `assigndet data check` lists them all")
    logger.warning("%s; skipped (data.skip_corrupt=true)", what)
    dataset.mark_unreadable(missing)


def build_dataset(cfg: Config, *, train: bool) -> CocoDetection:
    """The training or validation dataset named by ``cfg.data`` (with the model's pixel offset),
    validated: the annotation file completely, and the existence of every image file."""
    images, ann = dataset_paths(cfg.data, train=train)
    dataset = CocoDetection(images, ann, train=train, offset=cfg.model.offset, filter_empty=cfg.data.filter_empty,
                            skip_corrupt=cfg.data.skip_corrupt)
    check_files(dataset)
    return dataset


__all__ = ["dataset_paths", "build_dataset", "check_files"]
