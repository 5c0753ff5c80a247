"""Every named choice of the library, as an enum: chosen once when a config is built, then
compared by identity downstream (``cfg.paa_variant is PAAVariant.mmdet``), never re-validated.

The members are ``str`` enums whose value is the spelling of the config files and the command
line (``model.paa_variant=mmdet``), so OmegaConf checks overrides against them and YAML shows the
plain word. Pure functions that take a choice accept the enum or its spelling
(``PAAVariant("mmdet")``); an unknown spelling raises a ``ValueError`` naming the valid ones.

This module is the bottom of the import layers: it imports nothing of the library.
"""
from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """Base of the choices: the value is the spelling; unknown spellings list the valid ones."""

    @classmethod
    def _missing_(cls, value):
        names = ", ".join(m.value for m in cls)
        raise ValueError(f"{value!r} is not a valid {cls.__name__} (expected one of: {names})")

    def __str__(self) -> str:
        return self.value


class Arch(Choice):
    atss = "atss"
    paa = "paa"
    dynamic_atss = "dynamic_atss"
    faster_rcnn = "faster_rcnn"
    iounet = "iounet"


class Convention(Choice):
    """Whose pixel and anchor conventions a piece follows: the original maskrcnn-benchmark code
    (``mrcnn``: +1 widths, anchors centred at s/2) or mmdetection's port (``mmdet``: no +1,
    anchors centred on the grid points). Anchor styles and PAA's first-stage match use it."""

    mrcnn = "mrcnn"
    mmdet = "mmdet"


class BackboneStyle(Choice):
    caffe2 = "caffe2"  # stride in the 1x1 conv (MSRA weights)
    pytorch = "pytorch"  # stride in the 3x3 conv (torchvision, FAIR ResNeXt)


class Norm(Choice):
    frozen_bn = "frozen_bn"
    bn = "bn"
    gn = "gn"


class HeadNorm(Choice):
    gn = "gn"
    none = "none"


class ResizeRule(Choice):
    mrcnn = "mrcnn"  # short side S, long side truncated (maskrcnn-benchmark)
    minimal = "minimal"  # int(scale * side), scale = min(S / short, max / long) (PAA_minimal)
    mmdet = "mmdet"  # the same scale rounded to nearest, OpenCV-like bilinear (mmcv)


class PAAVariant(Choice):
    original = "original"  # kkhoot/PAA
    mmdet = "mmdet"  # mmdetection's port: its step A, GIoU 1.3 scores, cut, cls normaliser
    minimal = "minimal"  # feiyuhuahuo/PAA_minimal: the cut inside the foreground subset


#: global: N_pos and the sums are averaged over processes; local: per process (PAA_minimal,
#: mmdetection's PAA). Built with the functional API so that the member names equal the
#: spellings (``global`` is a keyword): ``LossNormalizer["global"]``, ``LossNormalizer.local``.
LossNormalizer = Choice("LossNormalizer", {"global": "global", "local": "local"})


class Postprocess(Choice):
    original = "original"  # SPEC §1.9
    mmdet = "mmdet"  # mmdetection's ATSS / PAA inference rules (SPEC §6)


#: how TTA merges its runs: ``TTAMerge["soft-vote"]`` or ``TTAMerge.vote``
TTAMerge = Choice("TTAMerge", {"soft-vote": "soft-vote", "vote": "vote"})


class LowQuality(Choice):
    """RPN low-quality matches: ``mmdet`` (best anchors of a GT with IoU >= the background
    threshold go to that GT) or ``detectron2`` (best anchors of a GT, any IoU, are positive with
    their own argmax GT)."""

    mmdet = "mmdet"
    detectron2 = "detectron2"


class RoIPool(Choice):
    roi_align = "roi_align"
    prroi = "prroi"


class IoULoss(Choice):
    smoothl1 = "smoothl1"  # SmoothL1(beta 1) on (u - 0.5) / 0.5 (paper)
    bce = "bce"


class IoURank(Choice):
    iou = "iou"  # paper: rank by the predicted IoU
    score_iou = "score_iou"  # improved: rank by cls x IoU
    score = "score"  # plain NMS by the class score


class Warmup(Choice):
    constant = "constant"
    linear = "linear"


class Optimizer(Choice):
    sgd = "sgd"  # with momentum (the papers' recipe)
    adamw = "adamw"  # decoupled weight decay; betas (momentum, 0.999)


class AMP(Choice):
    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"


__all__ = ["Choice", "Arch", "Convention", "BackboneStyle", "Norm", "HeadNorm", "ResizeRule", "PAAVariant",
           "LossNormalizer", "Postprocess", "TTAMerge", "LowQuality", "RoIPool", "IoULoss", "IoURank", "Warmup",
           "AMP"]
