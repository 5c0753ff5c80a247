"""The shared dense head of ATSS / PAA / Dynamic ATSS (SPEC §2.1, §3.1)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..variants import HeadNorm
from .backbone import group_norm
from .dcn import DeformConv
from .fastpath import conv_levels, inner_hooks


def flatten_levels(maps: list[Tensor], per_anchor: int) -> Tensor:
    """Per-level head outputs (B, A*K, H, W) -> (B, sum_l H_l W_l A, K), levels concatenated in
    the anchors' order (location-major, then anchor; SPEC §1.5); K = ``per_anchor`` values per anchor."""
    out = []
    for m in maps:
        B, AK, H, W = m.shape
        A = AK // per_anchor
        m = m.view(B, A, per_anchor, H, W).permute(0, 3, 4, 1, 2)  # (B, H, W, A, K)
        out.append(m.reshape(B, H * W * A, per_anchor))  # (B, HWA, K)
    return torch.cat(out, dim=1)


class Scale(nn.Module):
    """A learnable scalar per level (``scales.{l}.scale``, shape [1] as in the original)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init], dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(channels: int, num_convs: int, *, bias: bool, norm: HeadNorm, dcn_last: bool = False) -> nn.Sequential:
    """[conv3x3, GN, ReLU] x num_convs; with ``dcn_last`` the last conv is a modulated DCN
    (``USE_DCN_IN_TOWER``; state-dict names ``{3 (n - 1)}.offset.*`` / ``{3 (n - 1)}.conv.*``)."""
    layers: list[nn.Module] = []
    for i in range(num_convs):
        if dcn_last and i == num_convs - 1:
            layers.append(DeformConv(channels, channels, 3, padding=1, bias=bias))
        else:
            layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=bias))
        if norm is HeadNorm.gn:
            layers.append(group_norm(channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DenseHead(nn.Module):
    """Two towers; class logits on the cls tower, box deltas (x a per-level Scale) and one
    quality logit (centerness for ATSS, IoU for PAA / Dynamic ATSS) on the bbox tower.

    ``forward`` returns logits (B, A, C), deltas (B, A, 4) and quality logits (B, A), levels
    concatenated in the anchors' order (SPEC §1.5).

    ``fast`` (``model.fast_path``): each layer runs on all levels with its weight laid out once for
    them (channels-last on CPU), and the box and quality predictors, which read the same tower, run
    as one convolution; the plain modules run while a module inside has a forward hook.
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
        norm: HeadNorm | str = HeadNorm.gn,
        dcn_last: bool = False,
        fast: bool = False,
    ) -> None:
        super().__init__()
        self.fast = fast
        norm = HeadNorm(norm)
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

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        if self.fast and not inner_hooks(self):
            return self._fast_forward(features)
        logits, deltas, quality = [], [], []
        for feat, scale in zip(features, self.scales):
            c = self.cls_tower(feat)
            t = self.bbox_tower(feat)
            logits.append(self.cls_logits(c))  # (B, A*C, H, W)
            deltas.append(scale(self.bbox_pred(t)))  # (B, A*4, H, W)
            quality.append(self.quality(t))  # (B, A, H, W)
        return (flatten_levels(logits, self.num_classes), flatten_levels(deltas, 4),
                flatten_levels(quality, 1).squeeze(2))

    def _fast_forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` layer by layer over the levels: the same arithmetic, except that the merged
        predictor convolution rounds differently (float rounding: 1e-7 relative)."""
        c = t = list(features[: len(self.scales)])  # as the plain path's zip with the scales
        for cls_layer, box_layer in zip(self.cls_tower, self.bbox_tower):
            c, t = _layer_levels(cls_layer, c), _layer_levels(box_layer, t)
        logits = conv_levels(self.cls_logits, c)
        n = 4 * self.num_anchors
        box_quality = conv_levels(self.bbox_pred, t, also=self.quality)  # (B, 5A, H, W): deltas, then quality
        deltas = [scale(o[:, :n]) for o, scale in zip(box_quality, self.scales)]
        quality = [o[:, n:] for o in box_quality]
        return (flatten_levels(logits, self.num_classes), flatten_levels(deltas, 4),
                flatten_levels(quality, 1).squeeze(2))


def _layer_levels(layer: nn.Module, feats: list[Tensor]) -> list[Tensor]:
    if type(layer) is nn.Conv2d:
        return conv_levels(layer, feats)
    return [layer(f) for f in feats]
