"""FPN P3-P7 of RetinaNet/ATSS on top of torchvision's FeaturePyramidNetwork (SPEC §1.4)."""
from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7


class P6P7NoReLU(ExtraFPNBlock):
    """mmdetection's extra levels: P6 = conv(P5), P7 = conv(P6) without ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        for m in (self.p6, self.p7):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)

    def forward(self, results, x, names):
        p6 = self.p6(results[-1])
        p7 = self.p7(p6)
        return results + [p6, p7], names + ["p6", "p7"]


class RetinaFPN(nn.Module):
    """C3..C5 -> P3..P7. P6 = conv3x3/2(P5); P7 = conv3x3/2(ReLU(P6)) (original) or without ReLU."""

    def __init__(self, in_channels: list[int], out_channels: int = 256, *, relu_before_p7: bool = True) -> None:
        super().__init__()
        extra = LastLevelP6P7(out_channels, out_channels) if relu_before_p7 else P6P7NoReLU(out_channels)
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        out = self.fpn(OrderedDict((f"c{i + 3}", f) for i, f in enumerate(feats)))
        return list(out.values())
