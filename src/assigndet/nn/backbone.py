"""ResNet / ResNeXt bodies from torchvision's blocks, in torchvision's module names.

Options cover the original weights' "caffe2" style (stride in the first 1x1 conv of each
downsampling block, FrozenBatchNorm without epsilon) and the torchvision style (stride in the
3x3 conv). The body returns C2..C5 (strides 4, 8, 16, 32).
"""
from __future__ import annotations

import logging
import math
import os
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from ..variants import BackboneStyle, Norm
from .dcn import DeformConv
from .fastpath import conv_bn_relu, drop_folded, inner_hooks, prefers_channels_last, stage_forward

log = logging.getLogger("assigndet")

_BLOCKS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3]),
           101: (Bottleneck, [3, 4, 23, 3]), 152: (Bottleneck, [3, 8, 36, 3])}


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32, C) as the original; narrower layers keep at least 2 channels per group so that
    a 1x1 map (P7 of a small image) still normalises over more than one value."""
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def norm_layer_factory(norm: Norm | str, *, frozen_bn_eps: float = 0.0):
    """The normalisation layer constructor (channels -> module) named by ``norm``."""
    norm = Norm(norm)
    if norm is Norm.frozen_bn:
        return partial(FrozenBatchNorm2d, eps=frozen_bn_eps)
    return nn.BatchNorm2d if norm is Norm.bn else group_norm


def _stage(block, n: int, inplanes: int, planes: int, stride: int, *, style: BackboneStyle, groups: int,
           width_per_group: int, norm_layer, dcn: bool) -> tuple[nn.Sequential, int]:
    """One ResNet stage of ``n`` blocks -> (the stage, its output channels). ``style`` caffe2: the
    stride of the first block sits in its 1x1 conv; ``dcn``: modulated DCN v2 as every 3x3 conv."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            norm_layer(planes * block.expansion),
        )
    kw = dict(groups=groups, base_width=width_per_group, norm_layer=norm_layer) if block is Bottleneck else dict(norm_layer=norm_layer)
    blocks = [block(inplanes, planes, stride, downsample, **kw)]
    inplanes = planes * block.expansion
    blocks += [block(inplanes, planes, **kw) for _ in range(1, n)]
    if style is BackboneStyle.caffe2 and block is Bottleneck and stride != 1:
        blocks[0].conv1.stride = (stride, stride)  # STRIDE_IN_1X1
        blocks[0].conv2.stride = (1, 1)
    if dcn:
        if block is not Bottleneck:
            raise ValueError("deformable convs (stage_with_dcn) need a bottleneck ResNet (depth >= 50)")
        for blk in blocks:  # modulated DCN v2 replaces the 3x3 conv (names conv2.offset / conv2.conv)
            c = blk.conv2
            blk.conv2 = DeformConv(c.in_channels, c.out_channels, 3, stride=c.stride[0], padding=1,
                                   groups=c.groups, bias=False)
    return nn.Sequential(*blocks), inplanes


class ResNetBody(nn.Module):
    """conv1/bn1/relu/maxpool + layer1..layer4; forward returns [C2, C3, C4, C5]."""

    def __init__(
        self,
        *,
        depth: int = 50,
        groups: int = 1,
        width_per_group: int = 64,
        base_width: int = 64,
        style: BackboneStyle | str = BackboneStyle.caffe2,
        norm: Norm | str = Norm.frozen_bn,
        frozen_bn_eps: float = 0.0,
        freeze_at: int = 2,
        stage_with_dcn: tuple[bool, ...] | list[bool] = (False, False, False, False),
        fast: bool = True,
    ) -> None:
        super().__init__()
        #: the fast path (nn/fastpath.py): BatchNorm folded into its conv where it can be, NHWC on CPU;
        #: the plain modules run instead while a module inside has a forward hook (it would not fire)
        self.fast = fast
        if len(stage_with_dcn) != 4:
            raise ValueError(f"stage_with_dcn needs 4 entries (c2..c5), got {list(stage_with_dcn)}")
        if depth not in _BLOCKS:
            raise ValueError(f"unsupported ResNet depth {depth} (expected one of {sorted(_BLOCKS)})")
        style = BackboneStyle(style)
        block, layers = _BLOCKS[depth]
        norm_layer = norm_layer_factory(norm, frozen_bn_eps=frozen_bn_eps)
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = base_width
        self.out_channels: list[int] = []
        for i, n in enumerate(layers):
            stage, inplanes = _stage(block, n, inplanes, base_width * 2**i, 1 if i == 0 else 2, style=style,
                                     groups=groups, width_per_group=width_per_group, norm_layer=norm_layer,
                                     dcn=stage_with_dcn[i])
            setattr(self, f"layer{i + 1}", stage)
            self.out_channels.append(inplanes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, DeformConv):
                m.reset_offset()
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """0: nothing; 1: the stem; 2: stem + layer1 (FREEZE_CONV_BODY_AT); k: stem + layer1..k-1."""
        modules = [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, 5)]
        for m in modules[: freeze_at + 1 if freeze_at > 0 else 0]:
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNetBody":
        if mode != self.training:  # switching: folded weights are rebuilt from the current parameters
            drop_folded(self)
        return super().train(mode)

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.fast and not inner_hooks(self):
            if prefers_channels_last(x):
                x = x.contiguous(memory_format=torch.channels_last)
            x = self.maxpool(conv_bn_relu(self.conv1, self.bn1, x))
            c2 = stage_forward(self.layer1, x, private=True)  # the stem's output is nobody else's
            stage = stage_forward
        else:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            stage = nn.Module.__call__  # the modules themselves (with their hooks)
            c2 = stage(self.layer1, x)
        c3 = stage(self.layer2, c2)
        c4 = stage(self.layer3, c3)
        c5 = stage(self.layer4, c4)
        return [c2, c3, c4, c5]


_TV_NAMES = {(18, 1, 64): "resnet18", (34, 1, 64): "resnet34", (50, 1, 64): "resnet50", (101, 1, 64): "resnet101",
             (152, 1, 64): "resnet152", (50, 32, 4): "resnext50_32x4d", (101, 32, 8): "resnext101_32x8d",
             (101, 64, 4): "resnext101_64x4d"}


def load_backbone_weights(body: ResNetBody, weights: str, *, depth: int, groups: int, width_per_group: int) -> None:
    """Load ImageNet weights from a torchvision weight enum name (e.g. ``IMAGENET1K_V1`` or
    ``ResNet50_Weights.IMAGENET1K_V2``) or a local ``.pth``/``.safetensors`` file."""
    if os.path.exists(weights):
        if weights.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(weights)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    else:
        from torchvision.models import get_model_weights

        name = _TV_NAMES.get((depth, groups, width_per_group))
        if name is None:
            raise ValueError(f"no torchvision ImageNet weights for ResNet depth {depth}, {groups}x{width_per_group}d; "
                             "give a local file in model.backbone.weights")
        enum = get_model_weights(name)
        key = weights.split(".")[-1]
        try:
            w = enum[key]
        except KeyError:
            raise ValueError(f"unknown backbone weights {weights!r}: neither a file nor one of "
                             f"{[m.name for m in enum]}") from None
        state = w.get_state_dict(progress=False)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = body.state_dict()
    # a deformable 3x3 conv keeps its kernel under conv2.conv.weight; its offset conv starts fresh
    state = {(k[: -len("weight")] + "conv.weight" if k not in own and k[: -len("weight")] + "conv.weight" in own
              else k): v for k, v in state.items()}
    missing, unexpected = body.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and ".offset." not in k]
    if missing or unexpected:
        raise ValueError(f"backbone weights {weights}: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
    log.info("loaded backbone weights %s", weights)
