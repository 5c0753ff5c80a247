"""Modulated deformable convolution v2 on ``torchvision.ops.deform_conv2d`` (SPEC §1.3, §2.1).

The module keeps the original repositories' sub-module names (maskrcnn-benchmark's
``DFConv2d``), so their checkpoints load key for key:

* ``offset``: a regular 3x3 conv (with bias) producing ``3 * k * k`` = 27 channels: the first
  18 are the (dy, dx) sampling offsets of the 9 kernel taps, interleaved per tap (the layout of
  both the original CUDA kernel and torchvision's), the last 9 are mask logits passed through a
  sigmoid;
* ``conv``: holds the deformable kernel ``weight`` (out, in / groups, k, k) and its optional
  ``bias``; it is an ``nn.Conv2d`` only as a parameter holder (stride, padding, dilation, groups
  are read from it), its own ``forward`` is never called.

State-dict names inside a bottleneck: ``conv2.offset.weight`` [27, C, 3, 3], ``conv2.offset.bias``
[27], ``conv2.conv.weight`` [C, C / groups, 3, 3]; in a head tower ``cls_tower.9.offset.*`` and
``cls_tower.9.conv.{weight,bias}``.

Initialisation: the offset conv starts at zero (weights and bias), so a fresh DCN samples the
regular 3x3 grid with mask 0.5. (The originals initialise the offset conv randomly -- kaiming-
uniform in the backbone, N(0, 0.01) in the head; this only matters when training one from
scratch, and a loaded checkpoint overrides it.)
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import deform_conv2d


class DeformConv(nn.Module):
    """Modulated deformable conv v2 (one offset group) -> (B, out_channels, H', W')."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.taps = kernel_size * kernel_size
        #: 2 * taps offsets (dy, dx per tap) + taps mask logits
        self.offset = nn.Conv2d(in_channels, 3 * self.taps, kernel_size, stride=stride, padding=padding,
                                dilation=dilation, bias=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=bias)
        self.reset_offset()

    def reset_offset(self) -> None:
        """Zero offsets and mask logits (regular grid, mask 0.5)."""
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    @property
    def weight(self) -> Tensor:  # so code that inspects ``conv.weight`` of a block keeps working
        return self.conv.weight

    @property
    def stride(self) -> tuple[int, int]:
        return self.conv.stride  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        om = self.offset(x)  # (B, 3 taps, H', W')
        offset = om[:, : 2 * self.taps]  # (B, 2 taps, H', W')
        mask = om[:, 2 * self.taps :].sigmoid()  # (B, taps, H', W')
        c = self.conv
        return deform_conv2d(x, offset, c.weight, c.bias, stride=c.stride, padding=c.padding,
                             dilation=c.dilation, mask=mask)

    def extra_repr(self) -> str:
        c = self.conv
        return (f"{c.in_channels}, {c.out_channels}, kernel_size={c.kernel_size}, stride={c.stride}, "
                f"groups={c.groups}, bias={c.bias is not None}, modulated")
