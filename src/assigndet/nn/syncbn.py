"""BatchNorm statistics over the batches of all processes (distributed training).

``torch.nn.SyncBatchNorm`` does this on CUDA, but refuses CPU tensors ("SyncBatchNorm expected
input tensor to be on GPU", torch 2.14), so CPU runs (gloo) use :class:`AllReduceBatchNorm2d`:
the same statistics computed with two differentiable all-reduces
(``torch.distributed.nn.functional.all_reduce``), first the per-channel sums and element count
(the global mean), then the per-channel sums of squared deviations from it (the global biased
variance). Its backward all-reduces the gradients of those sums, so every process gets the
gradient of the sum of all processes' losses, as SyncBatchNorm does; with DDP's gradient mean
that is the gradient one process computes over the whole batch. Running statistics are updated
as ``nn.BatchNorm2d`` does (unbiased variance, ``momentum``), identically on every process.

:func:`convert_sync_batchnorm` picks torch's module on CUDA and this one elsewhere; FrozenBN and
GroupNorm are left alone. Outside training or without a process group of more than one process
the module is a plain ``nn.BatchNorm2d``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with training statistics over all processes (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        sums = torch.cat([x.sum(dim=(0, 2, 3)), x.new_full((1,), x.numel() / c)])  # (C + 1,)
        sums = differentiable_all_reduce(sums)
        count = sums[c].detach()
        mean = sums[:c] / count  # (C,)
        centred = x - mean.view(1, c, 1, 1)
        var = differentiable_all_reduce((centred * centred).sum(dim=(0, 2, 3))) / count  # (C,) biased
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), float(count))
        return y

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / max(count - 1.0, 1.0))
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)


def _to_all_reduce(bn: nn.BatchNorm2d) -> AllReduceBatchNorm2d:
    """The same layer, sharing its parameters and buffers (the optimiser keeps working on them)."""
    new = AllReduceBatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                               track_running_stats=bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    return new.train(bn.training)


def _replace_bn(module: nn.Module) -> int:
    n = 0
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, _to_all_reduce(child))
            n += 1
        else:
            n += _replace_bn(child)
    return n


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """``model`` with its ``nn.BatchNorm*`` layers synchronised across processes: torch's
    ``SyncBatchNorm`` on CUDA, :class:`AllReduceBatchNorm2d` elsewhere. Parameters and buffers are
    the same tensors (an optimiser built before stays valid; state dict keys are unchanged).
    Returns ``(model, number of layers converted)``."""
    if device.type == "cuda":
        before = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model, before
    if type(model) is nn.BatchNorm2d:
        return _to_all_reduce(model), 1
    return model, _replace_bn(model)


__all__ = ["AllReduceBatchNorm2d", "convert_sync_batchnorm"]
