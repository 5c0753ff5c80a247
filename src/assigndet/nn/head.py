"""The shared dense head of ATSS / PAA / Dynamic ATSS (SPEC §2.1, §3.1)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .backbone import _group_norm
from .dcn import DeformConv


class Scale(nn.Module):
    """A learnable scalar per level (``scales.{l}.scale``, shape [1] as in the original)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init], dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(channels: int, num_convs: int, *, bias: bool, norm: str, dcn_last: bool = False) -> nn.Sequential:
    """[conv3x3, GN, ReLU] x num_convs; with ``dcn_last`` the last conv is a modulated DCN
    (``USE_DCN_IN_TOWER``; state-dict names ``{3 (n - 1)}.offset.*`` / ``{3 (n - 1)}.conv.*``)."""
    layers: list[nn.Module] = []
    for i in range(num_convs):
        if dcn_last and i == num_convs - 1:
            layers.append(DeformConv(channels, channels, 3, padding=1, bias=bias))
        else:
            layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=bias))
        if norm == "gn":
            layers.append(_group_norm(channels))
        elif norm != "none":
            raise ValueError(f"unknown head norm {norm!r} (expected 'gn' or 'none')")
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DenseHead(nn.Module):
    """Two towers; class logits on the cls tower, box deltas (x a per-level Scale) and one
    quality logit (centerness for ATSS, IoU for PAA / Dynamic ATSS) on the bbox tower.

    ``forward`` returns logits (B, A, C), deltas (B, A, 4) and quality logits (B, A), levels
    concatenated in the anchors' order (SPEC §1.5).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_anchors: int = 1,
        num_convs: int = 4,
        num_levels: int = 5,
        prior_prob: float = 0.01,
        conv_bias: bool = True,
        norm: str = "gn",
        dcn_last: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.cls_tower = _tower(in_channels, num_convs, bias=conv_bias, norm=norm, dcn_last=dcn_last)
        self.bbox_tower = _tower(in_channels, num_convs, bias=conv_bias, norm=norm, dcn_last=dcn_last)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.quality = nn.Conv2d(in_channels, num_anchors, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, DeformConv):
                m.reset_offset()
        #: the focal-loss prior: every class starts at probability ``prior_prob``
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def _flatten(self, x: Tensor, k: int) -> Tensor:
        b, _, h, w = x.shape
        x = x.view(b, self.num_anchors, k, h, w).permute(0, 3, 4, 1, 2)  # (B, H, W, A, K)
        return x.reshape(b, h * w * self.num_anchors, k)  # (B, HWA, K)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        logits, deltas, quality = [], [], []
        for feat, scale in zip(features, self.scales):
            c = self.cls_tower(feat)
            t = self.bbox_tower(feat)
            logits.append(self._flatten(self.cls_logits(c), self.num_classes))
            deltas.append(self._flatten(scale(self.bbox_pred(t)), 4))
            quality.append(self._flatten(self.quality(t), 1))
        return torch.cat(logits, 1), torch.cat(deltas, 1), torch.cat(quality, 1).squeeze(2)
