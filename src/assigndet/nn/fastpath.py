"""The fast path of the ResNet body: a frozen (or evaluating) BatchNorm folded into the convolution
before it, and the channels-last memory format on CPU.

Folding: ``bn(conv(x, W))`` = ``conv(x, W * s) + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``;
one convolution with a bias instead of a convolution and a pass over its output. It is exact in
arithmetic and differs from the plain path by float rounding only (about 1e-6 relative). In
training the folded weight is rebuilt at every forward pass from the convolution's own parameter
(the gradient reaches ``W`` through the product); without autograd it is built once and reused
until the weight or the statistics change (``_version`` and storage of the tensors: loading a
state dict, ``.to(device)`` or an optimiser step rebuild it; so does switching between ``train()``
and ``eval()``, which drops the cache: do so after editing weights through ``.data``, which keeps
no version; a repeated ``eval()``, as every ``inference`` call makes, keeps it). A trainable BatchNorm in training
mode is never folded (its statistics come from the batch).

Fusion: on CPU in float32 the ReLU after a folded convolution, and the residual sum before the
ReLU at the end of a block, run inside oneDNN's convolution (``mkldnn::_convolution_pointwise``,
the kernel ``torch.compile`` uses for the same fusion): one pass over the output instead of three.
The backward pass is the plain one (``threshold_backward`` on the output, then
``convolution_backward``); forward and gradients were bit-identical to the unfused ops on the
machine this was measured on (the tests allow float rounding). Anywhere else (CUDA, float64,
autocast, a traced graph, oneDNN absent or switched off by ``torch.backends.mkldnn.flags``) the
unfused ops run. The fused backward is not itself differentiable (``create_graph=True``, a
gradient penalty) and has no ``torch.func`` rules: use ``model.fast_path=false`` for those.

A forward hook on a module inside the body (a feature extractor on ``layer3``, say) would not fire
on the fast path, which calls the blocks' pieces itself: while one is registered the body runs its
plain modules instead (:func:`inner_hooks`).

The state dict keeps its names and tensors: ``conv1.weight``, ``bn1.running_var`` ... as on the
plain path, so checkpoints move freely between the two.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.modules import module as _hooks
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d


def foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn(conv(x))`` can run as one convolution: a plain Conv2d followed by a FrozenBN or
    by a BatchNorm evaluating on its running statistics."""
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros":
        return False
    if isinstance(bn, FrozenBatchNorm2d):
        return True
    return (isinstance(bn, nn.modules.batchnorm._BatchNorm) and not bn.training
            and bn.running_mean is not None and bn.running_var is not None)


def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """The per-channel scale and shift of a frozen or evaluating BatchNorm."""
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = gamma * (bn.running_var + bn.eps).rsqrt()  # (C,)
    return scale, beta - bn.running_mean * scale


def _tracing() -> bool:
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or torch.jit.is_tracing() or torch.jit.is_scripting())


def drop_folded(module: nn.Module) -> None:
    """Forget every cached folded weight under ``module``."""
    for m in module.modules():
        m.__dict__.pop(_CACHE, None)


_CACHE = "_assigndet_fold"


def _key(tensors) -> tuple:
    return tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors if t is not None)


def folded_weights(conv: nn.Conv2d, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """(weight, bias) of the folded convolution; cached on ``bn`` while no gradient is needed."""
    tensors = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    if _needs_graph(*tensors) or _tracing():  # traced graphs (export, compile) fold in the graph
        return _fold(conv, bn)
    key = _key(tensors)
    cache = bn.__dict__.get(_CACHE)
    if cache is None or cache[0] != key:
        cache = (key, _fold(conv, bn))
        bn.__dict__[_CACHE] = cache  # a plain attribute: not in the state dict
    return cache[1]


def _fold(conv: nn.Conv2d, bn: nn.Module) -> tuple[Tensor, Tensor]:
    scale, shift = _bn_affine(bn)
    weight = conv.weight * scale.to(conv.weight.dtype)[:, None, None, None]  # (O, I/g, kh, kw)
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return weight, bias.to(conv.weight.dtype)


def conv_bn(conv: nn.Module, bn: nn.Module, x: Tensor) -> Tensor:
    """``bn(conv(x))``, as one convolution when :func:`foldable`."""
    if not foldable(conv, bn):
        return bn(conv(x))
    weight, bias = folded_weights(conv, bn)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


#: oneDNN's convolution with fused element-wise ops, and its variant that sums into the residual's
#: memory (absent from builds without oneDNN)
_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None) if torch.backends.mkldnn.is_available() else None
_POINTWISE_INTO = getattr(torch.ops.mkldnn, "_convolution_pointwise_", None) if _POINTWISE is not None else None


def _fusable(x: Tensor, residual: Tensor | None) -> bool:
    if _POINTWISE is None or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or _tracing():
        return False
    if torch.is_autocast_enabled("cpu") or not torch.backends.mkldnn.enabled:  # also torch.backends.mkldnn.flags()
        return False
    return residual is None or (residual.dtype == x.dtype and residual.is_contiguous(memory_format=torch.channels_last)
                                and x.is_contiguous(memory_format=torch.channels_last))


class _ConvReLU(torch.autograd.Function):
    """``relu(conv2d(x, w, b) [+ residual])`` in one oneDNN call; the plain backward pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, stride, padding, dilation, groups):
        stride, padding, dilation = list(stride), list(padding), list(dilation)
        if residual is None:
            y = _POINTWISE(x, weight, bias, padding, stride, dilation, groups, "relu", [], "")
        else:
            y = _POINTWISE.binary(x, residual, weight, bias, padding, stride, dilation, groups, "add", 1.0, "relu", [], "")
        ctx.save_for_backward(x, weight, y)
        ctx.conv = (stride, padding, dilation, groups, bias is not None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conv
        grad = torch.ops.aten.threshold_backward(grad, y, 0)  # what relu_'s backward does
        mask = list(ctx.needs_input_grad[:3])
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if has_bias else None, stride, padding, dilation,
            False, [0, 0], groups, mask)
        return gx, gw, gb, grad if ctx.needs_input_grad[3] else None, None, None, None, None


def conv_bn_relu(conv: nn.Module, bn: nn.Module, x: Tensor, residual: Tensor | None = None, *,
                 overwrite: bool = False) -> Tensor:
    """``relu(bn(conv(x)) + residual)`` (no sum without ``residual``), fused where it can be.
    ``overwrite``: nobody else holds ``residual``; without autograd the result is then written into
    its memory (no new tensor: the frozen stages and inference allocate less)."""
    if foldable(conv, bn) and _fusable(x, residual):
        weight, bias = folded_weights(conv, bn)
        if overwrite and residual is not None and _POINTWISE_INTO is not None and not _needs_graph(x, weight, bias, residual):
            return _POINTWISE_INTO.binary(residual, x, weight, bias, list(conv.padding), list(conv.stride),
                                          list(conv.dilation), conv.groups, "add", 1.0, "relu", [], "")
        return _ConvReLU.apply(x, weight, bias, residual, conv.stride, conv.padding, conv.dilation, conv.groups)
    out = conv_bn(conv, bn, x)
    return (out if residual is None else out.add_(residual)).relu_()


def _needs_graph(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _downsample(blk: nn.Module, x: Tensor) -> Tensor:
    d = blk.downsample
    if d is None:
        return x
    if isinstance(d, nn.Sequential) and len(d) == 2:
        return conv_bn(d[0], d[1], x)
    return d(x)


def block_forward(blk: nn.Module, x: Tensor, private: bool = False) -> Tensor:
    """torchvision's Bottleneck / BasicBlock forward with every conv + BN folded where it can be.
    ``private``: nobody else holds ``x``, so the block may write its result over it."""
    if not isinstance(blk, (Bottleneck, BasicBlock)):
        return blk(x)
    identity = _downsample(blk, x)
    overwrite = private or identity is not x
    out = conv_bn_relu(blk.conv1, blk.bn1, x)
    if isinstance(blk, Bottleneck):
        out = conv_bn_relu(blk.conv2, blk.bn2, out)
        return conv_bn_relu(blk.conv3, blk.bn3, out, identity, overwrite=overwrite)
    return conv_bn_relu(blk.conv2, blk.bn2, out, identity, overwrite=overwrite)


def conv_levels(conv: nn.Conv2d, feats: list[Tensor], also: nn.Conv2d | None = None) -> list[Tensor]:
    """``conv`` on every tensor of ``feats`` (the levels of a pyramid) with its weight laid out once
    for all of them (channels-last when they are: oneDNN would otherwise reorder it per call and
    per backward pass); ``also``, a second convolution of the same input and geometry, runs in the
    same call, its output channels after ``conv``'s."""
    weight, bias = conv.weight, conv.bias
    if also is not None:
        if _geometry(also) != _geometry(conv):
            raise ValueError(f"conv_levels: {also} cannot run in one call with {conv}")
        weight = torch.cat([weight, also.weight])
        bias = None if bias is None and also.bias is None else torch.cat([_bias(conv), _bias(also)])
    if feats and feats[0].is_contiguous(memory_format=torch.channels_last) and not _tracing():
        weight = weight.contiguous(memory_format=torch.channels_last)
    return [F.conv2d(f, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups) for f in feats]


def _geometry(conv: nn.Conv2d) -> tuple:
    return (type(conv), conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
            conv.padding_mode)


def _bias(conv: nn.Conv2d) -> Tensor:
    return conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)


def inner_hooks(module: nn.Module) -> bool:
    """Whether a module inside ``module`` (not itself) has forward (pre-)hooks, or global ones exist:
    the fast path calls the blocks' pieces directly, so such hooks would not fire."""
    if _hooks._global_forward_hooks or _hooks._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules() if m is not module)


def stage_forward(stage: nn.Sequential, x: Tensor, private: bool = False) -> Tensor:
    """The blocks of ``stage`` in turn; ``private``: nobody else holds ``x`` (each later block's input
    is the previous block's own output)."""
    for i, blk in enumerate(stage):
        x = block_forward(blk, x, private or i > 0)
    return x


def prefers_channels_last(x: Tensor) -> bool:
    """Whether the convolutions of ``x``'s device run faster on NHWC (measured: CPU, float32, by
    benchmarks/bench_atss_vs_fcos.py); CUDA keeps NCHW (untested here without a GPU)."""
    return x.device.type == "cpu" and x.dim() == 4 and not _tracing()  # an exported graph has no layout
