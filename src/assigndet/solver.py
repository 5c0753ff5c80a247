"""The optimisation pieces of training: SGD parameter groups, the warm-up multi-step LR schedule,
mixed precision (autocast + grad scaler) and one optimiser step with optional gradient clipping.

Only :mod:`assigndet.engine` builds on this module (it re-exports the public names). The
choices ``solver.amp`` and ``solver.warmup_method`` are :mod:`assigndet.variants` enums,
validated when the config is built; the checks left here depend on runtime facts (the world
size, the device).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from .config import SolverConfig
from .errors import ConfigError
from .utils import get_world_size, is_dist
from .variants import AMP, Optimizer, Warmup


# ============================================================================ optimiser / schedule
def scaled_lr(solver: SolverConfig) -> float:
    """Linear scaling rule: ``base_lr * ims_per_batch / reference_batch`` (total batch)."""
    return solver.base_lr * solver.ims_per_batch / solver.reference_batch


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.Optimizer:
    """SGD with momentum (``solver.optimizer=sgd``) or AdamW (``adamw``, betas (momentum, 0.999),
    decoupled weight decay) over two parameter groups (trainable parameters only):

    * group 0: every parameter whose name does not contain ``"bias"``: ``lr``, ``weight_decay``;
    * group 1: names containing ``"bias"``: ``lr * bias_lr_factor``, ``weight_decay_bias``.
    """
    lr = scaled_lr(solver)
    weights, biases = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (biases if "bias" in name else weights).append(p)
    groups = [
        {"params": weights, "lr": lr, "weight_decay": solver.weight_decay, "name": "weights"},
        {"params": biases, "lr": lr * solver.bias_lr_factor, "weight_decay": solver.weight_decay_bias,
         "name": "biases"},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("the model has no trainable parameter")
    if solver.optimizer is Optimizer.adamw:
        return torch.optim.AdamW(groups, lr=lr, betas=(solver.momentum, 0.999))
    return torch.optim.SGD(groups, lr=lr, momentum=solver.momentum)


def lr_factor(iteration: int, solver: SolverConfig) -> float:
    """Multiplier of the (scaled) base LR used at 0-based ``iteration`` (SPEC §1.8).

    Warm-up for ``iteration < warmup_iters``: ``Warmup.constant`` → ``warmup_factor``;
    ``Warmup.linear`` → ``warmup_factor · (1 − α) + α`` with ``α = iteration / warmup_iters``.
    Times ``gamma ** (number of steps ≤ iteration)``.
    """
    decay = solver.gamma ** sum(1 for s in solver.steps if s <= iteration)
    if iteration >= solver.warmup_iters:
        return decay
    if solver.warmup_method is Warmup.linear:
        alpha = iteration / solver.warmup_iters
        return (solver.warmup_factor * (1 - alpha) + alpha) * decay
    return solver.warmup_factor * decay


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """``lr_k = initial_lr · lr_factor(k)`` in closed form (no accumulated products, so a
    resumed schedule is bit-identical). Step it after every optimiser step.

    The settings are kept as plain numbers and strings: they are part of ``state_dict()``,
    which checkpoints store for ``torch.load(weights_only=True)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, solver: SolverConfig, last_epoch: int = -1) -> None:
        self.solver_steps = list(solver.steps)
        self.gamma = float(solver.gamma)
        self.warmup_iters = int(solver.warmup_iters)
        self.warmup_factor = float(solver.warmup_factor)
        self.warmup_method = str(solver.warmup_method)
        super().__init__(optimizer, last_epoch)

    def _solver(self) -> SolverConfig:
        return SolverConfig(steps=self.solver_steps, gamma=self.gamma, warmup_iters=self.warmup_iters,
                            warmup_factor=self.warmup_factor, warmup_method=Warmup(self.warmup_method))

    def get_lr(self) -> list[float]:
        f = lr_factor(max(self.last_epoch, 0), self._solver())
        return [base * f for base in self.base_lrs]


def validate_solver(solver: SolverConfig, world_size: int) -> int:
    """Check the batch settings against the number of processes; return the per-process batch size."""
    if solver.ims_per_batch < 1:
        raise ConfigError(f"solver.ims_per_batch must be >= 1, got {solver.ims_per_batch}")
    if solver.ims_per_batch % world_size:
        raise ConfigError(f"solver.ims_per_batch={solver.ims_per_batch} (the total over all processes) is not "
                          f"divisible by the {world_size} processes")
    if solver.reference_batch < 1:
        raise ConfigError("solver.reference_batch must be >= 1")
    if solver.max_iter < 0:
        raise ConfigError("solver.max_iter must be >= 0")
    if list(solver.steps) != sorted(solver.steps):
        raise ConfigError(f"solver.steps must be increasing, got {list(solver.steps)}")
    return solver.ims_per_batch // world_size


def reduce_losses(loss_dict: dict[str, torch.Tensor], total: torch.Tensor, stop: bool
                  ) -> tuple[dict[str, float], float, bool]:
    """Means over processes of the losses and the total; OR of the stop flags (one all-reduce)."""
    keys = sorted(loss_dict)
    vec = torch.stack([loss_dict[k].detach().float().reshape(()) for k in keys]
                      + [total.detach().float().reshape(()), torch.tensor(float(stop), device=total.device)])
    if is_dist():
        torch.distributed.all_reduce(vec)
        vec[:-1] /= get_world_size()
    vals = vec.cpu().tolist()
    return dict(zip(keys, vals[:-2])), vals[-2], vals[-1] > 0


# ================================================================================= AMP helpers
def check_amp(amp: AMP | str, device: torch.device) -> None:
    """fp16 autocast needs CUDA (float16 + GradScaler); bf16 and off run anywhere."""
    if AMP(amp) is AMP.fp16 and device.type != "cuda":
        raise ConfigError("solver.amp=fp16 needs a CUDA device (float16 autocast + GradScaler); "
                          "use solver.amp=bf16 on CPU")


def autocast(amp: AMP | str, device: torch.device):
    """The autocast context for ``amp`` (:class:`~assigndet.variants.AMP` or its spelling) on ``device``."""
    amp = AMP(amp)
    check_amp(amp, device)
    if amp is AMP.off:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp is AMP.bf16 else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(amp: AMP | str) -> Optional[torch.amp.GradScaler]:
    """The loss scaler fp16 training needs (``None`` otherwise)."""
    return torch.amp.GradScaler("cuda") if AMP(amp) is AMP.fp16 else None


def backward(total: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: Optional[torch.amp.GradScaler], clip_grad_norm: float) -> None:
    """Backward of ``total`` (scaled when there is a ``scaler``) and optional gradient-norm
    clipping (``clip_grad_norm > 0``, on the unscaled gradients). The weights and the optimiser
    state are not touched yet: an exception here leaves them as they were."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        if clip_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        return
    total.backward()
    if clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)


def apply_step(optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler]) -> None:
    """The optimiser step after :func:`backward` (through ``scaler`` when there is one): the
    only place the weights change."""
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def optimizer_step(total: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: Optional[torch.amp.GradScaler], clip_grad_norm: float) -> None:
    """:func:`backward` then :func:`apply_step`."""
    backward(total, model, optimizer, scaler, clip_grad_norm)
    apply_step(optimizer, scaler)


__all__ = ["scaled_lr", "build_optimizer", "lr_factor", "WarmupMultiStepLR", "validate_solver", "check_amp",
           "autocast", "grad_scaler", "reduce_losses", "backward", "apply_step", "optimizer_step"]
