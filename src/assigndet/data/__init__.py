"""Datasets and batching: COCO-format detection data, the generated "shapes" dataset, samplers."""
from .coco import CocoDetection, DatasetError
from .sampler import (InferenceBatchSampler, TrainBatchSampler, build_test_loader,
                      build_train_loader, collate)
from .shapes import generate_shapes

__all__ = [
    "CocoDetection",
    "DatasetError",
    "InferenceBatchSampler",
    "TrainBatchSampler",
    "build_test_loader",
    "build_train_loader",
    "collate",
    "generate_shapes",
]
