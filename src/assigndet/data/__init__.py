"""Datasets and batching: COCO-format detection data, the generated "shapes" dataset, samplers."""
from ..errors import DatasetError
from .build import build_dataset, check_files, dataset_paths
from .coco import CocoDetection
from .image import read_rgb
from .sampler import (InferenceBatchSampler, TrainBatchSampler, build_test_loader,
                      build_train_loader, collate)
from .shapes import generate_shapes

__all__ = [
    "CocoDetection",
    "DatasetError",
    "InferenceBatchSampler",
    "TrainBatchSampler",
    "build_dataset",
    "build_test_loader",
    "check_files",
    "build_train_loader",
    "collate",
    "dataset_paths",
    "generate_shapes",
    "read_rgb",
]
