"""The datasets a :class:`~assigndet.config.Config` names: paths of its splits and the
:class:`~assigndet.data.coco.CocoDetection` built from them."""
from __future__ import annotations

from pathlib import Path

from ..config import Config, DataConfig
from .coco import CocoDetection


def dataset_paths(data: DataConfig, *, train: bool) -> tuple[Path, Path]:
    """``(image directory, annotation file)`` of the training or validation split of ``data``
    (``cfg.data``); each path is relative to ``data.root`` unless it is absolute."""
    images, ann = (data.train_images, data.train_ann) if train else (data.val_images, data.val_ann)
    return _under(data.root, images), _under(data.root, ann)


def _under(root: str, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def build_dataset(cfg: Config, *, train: bool) -> CocoDetection:
    """The training or validation dataset named by ``cfg.data`` (with the model's pixel offset)."""
    images, ann = dataset_paths(cfg.data, train=train)
    return CocoDetection(images, ann, train=train, offset=cfg.model.offset, filter_empty=cfg.data.filter_empty,
                         skip_corrupt=cfg.data.skip_corrupt)


__all__ = ["dataset_paths", "build_dataset"]
