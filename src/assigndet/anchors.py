"""Anchors per pyramid level, in the order the heads flatten their outputs (SPEC §1.5).

Order: levels concatenated; within a level index = (i * W_l + j) * A + a.
Shape letters: A anchors per location, L levels.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .variants import Convention


def cell_anchors(
    stride: int,
    size: float,
    aspect_ratios: list[float] | tuple[float, ...] = (1.0,),
    scales_per_octave: int = 1,
    *,
    style: Convention | str = Convention.mrcnn,
) -> Tensor:
    """The A = len(ratios) * scales_per_octave anchors of one location at the origin -> (A, 4).

    ``style=Convention.mrcnn`` (maskrcnn-benchmark/Detectron, +1 widths): centre (s/2, s/2); the ratio
    shapes are rounded on the base stride cell, ``w = round(sqrt(s^2 / r))``, ``h = round(w r)``,
    then scaled to ``size``; box = centre -/+ (w - 1) / 2. Stride 8, size 64 gives
    [-27.5, -27.5, 35.5, 35.5].
    ``style=Convention.mmdet``: centre (0, 0), w = size / sqrt(r), h = size * sqrt(r), box = -/+ w / 2.
    Octave scales multiply the size by 2^(k / scales_per_octave), k = 0..K-1; order is ratio-major.
    """
    style = Convention(style)
    out = []
    for r in aspect_ratios:
        for k in range(scales_per_octave):
            z = size * 2.0 ** (k / scales_per_octave)
            if style is Convention.mrcnn:
                w0 = round(math.sqrt(stride * stride / r))
                h0 = round(w0 * r)
                w, h = w0 * z / stride, h0 * z / stride
                c = stride / 2.0
                out.append([c - (w - 1) / 2, c - (h - 1) / 2, c + (w - 1) / 2, c + (h - 1) / 2])
            else:
                w, h = z / math.sqrt(r), z * math.sqrt(r)
                out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(cell: Tensor, stride: int, height: int, width: int) -> Tensor:
    """Shift the (A, 4) cell anchors over an H x W grid -> (H * W * A, 4)."""
    xs = torch.arange(width, dtype=torch.float32, device=cell.device) * stride
    ys = torch.arange(height, dtype=torch.float32, device=cell.device) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
    shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)  # (HW, 1, 4)
    return (shifts + cell[None]).reshape(-1, 4)  # (HW * A, 4)


class AnchorGenerator(nn.Module):
    """Anchors for every level; the cell anchors are buffers (``cell_anchors.{l}``)."""

    def __init__(
        self,
        *,
        sizes: list[float],
        strides: list[int],
        aspect_ratios: list[float] = (1.0,),
        scales_per_octave: int = 1,
        style: Convention | str = Convention.mrcnn,
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"anchor sizes {list(sizes)} and strides {list(strides)} differ in length")
        self.strides = list(strides)
        self.num_anchors_per_location = len(aspect_ratios) * scales_per_octave
        cells = [cell_anchors(s, z, aspect_ratios, scales_per_octave, style=style) for s, z in zip(strides, sizes)]
        self._num_levels = len(cells)
        for i, c in enumerate(cells):
            self.register_buffer(f"cell_anchors_{i}", c, persistent=False)
        self._cache: dict[tuple, tuple[Tensor, list[int]]] = {}

    def cells(self) -> list[Tensor]:
        return [getattr(self, f"cell_anchors_{i}") for i in range(self._num_levels)]

    def forward(self, feature_sizes: list[tuple[int, int]]) -> tuple[Tensor, list[int]]:
        """All anchors (sum_l H_l W_l A, 4) and the number per level."""
        cells = self.cells()
        if torch.compiler.is_exporting():  # symbolic sizes (torch.export, ONNX): no cache
            return self._build(cells, feature_sizes)
        key = (tuple(feature_sizes), cells[0].device, cells[0].dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out = self._build(cells, feature_sizes)
        if len(self._cache) > 32:
            self._cache.clear()
        self._cache[key] = out
        return out

    def _build(self, cells: list[Tensor], feature_sizes: list[tuple[int, int]]) -> tuple[Tensor, list[int]]:
        per_level = [grid_anchors(c, s, h, w) for c, s, (h, w) in zip(cells, self.strides, feature_sizes)]
        return torch.cat(per_level), [a.shape[0] for a in per_level]
