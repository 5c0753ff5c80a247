"""Detectors and the builders."""
from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .atss import ATSS
from .base import DenseDetector, TargetError
from .dynamic_atss import DynamicATSS
from .faster_rcnn import FasterRCNN
from .iounet import IoUNet
from .paa import PAA

ARCHS: dict[str, type[nn.Module]] = {"atss": ATSS, "dynamic_atss": DynamicATSS, "paa": PAA,
                                   "faster_rcnn": FasterRCNN, "iounet": IoUNet}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The detector described by ``cfg`` (random init unless backbone weights are configured)."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown model.arch {cfg.arch!r} (expected one of {sorted(ARCHS)})")
    return ARCHS[cfg.arch](cfg)


__all__ = ["ATSS", "DynamicATSS", "PAA", "FasterRCNN", "IoUNet", "DenseDetector", "TargetError", "ARCHS", "build_model"]
