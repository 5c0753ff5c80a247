"""The detectors, one file per method, and :func:`build_model`."""
from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..variants import Arch
from .atss import ATSS
from .base import DenseDetector
from .common import TargetError
from .dynamic_atss import DynamicATSS
from .faster_rcnn import FasterRCNN
from .iounet import IoUNet
from .paa import PAA

#: the detector class of each architecture
ARCHS: dict[Arch, type[nn.Module]] = {Arch.atss: ATSS, Arch.dynamic_atss: DynamicATSS, Arch.paa: PAA,
                                      Arch.faster_rcnn: FasterRCNN, Arch.iounet: IoUNet}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The detector described by ``cfg`` (the model config of its architecture; random init
    unless backbone weights are configured)."""
    return ARCHS[cfg.arch](cfg)


__all__ = ["ATSS", "DynamicATSS", "PAA", "FasterRCNN", "IoUNet", "DenseDetector", "TargetError", "ARCHS", "build_model"]
