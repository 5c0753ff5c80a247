"""Iteration-based training (one process or ``torchrun``), with periodic checkpoints and evaluation.

The engine knows only the detector contract (torchvision's): in train mode
``model(images, targets)`` returns a dict of named scalar losses (total = their sum), in eval
mode ``model(images)`` returns ``list[dict(boxes, scores, labels)]`` in original-image pixels with
0-based labels. It works in one process or under ``torchrun`` (one process per device).

Files written into the output directory (rank 0):

* ``config.yaml``            the resolved configuration
* ``metrics.jsonl``          one JSON object per logged iteration: ``iteration`` (0-based), each
                             loss, ``total``, ``lr`` (non-bias group), ``time`` (s/iter),
                             ``data_time``; losses are means over all processes
* ``tensorboard/``           the same scalars (+ evaluation AP) for TensorBoard
* ``model_XXXXXXX.*``, ``model_final.*``, ``last_checkpoint``  see :mod:`assigndet.checkpoints`
* ``detections.json``, ``eval.json``, ``eval_history.jsonl``  see :func:`assigndet.evaluation.evaluate`

Signals: SIGINT/SIGTERM set a flag; the loop finishes the current iteration, saves a checkpoint,
and :func:`train` returns a result with ``interrupted=True`` and ``exit_code = 128 + signal``
(130 for SIGINT, 143 for SIGTERM -- the shell convention for "stopped by that signal", distinct
from 0 = finished, 1 = crash and 2 = user error). ``train(..., resume=True)`` then continues
exactly where it stopped. A second SIGINT raises ``KeyboardInterrupt`` immediately.

:func:`train` is a sequence of small pieces: :func:`_setup` (device, process group, data, model,
optimiser), :func:`_resume`, then per iteration :func:`_train_step`, the periodic checkpoint and
evaluation (:func:`_after_step`), and :func:`_finish` (final checkpoint and evaluation).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from . import checkpoints as ck
from .config import Config, ModelConfig, config_to_yaml
from .data import CocoDetection, build_dataset, build_train_loader, dataset_paths
from .detectors import build_model
from .errors import ConfigError
from .evaluation import DETECTIONS_FILE, EVAL_FILE, EVAL_HISTORY_FILE, evaluate, inference
from .monitor import METRICS_FILE, MetricsLog, Progress, StopFlag
from .solver import (WarmupMultiStepLR, autocast, build_optimizer, check_amp, grad_scaler, lr_factor,
                     optimizer_step, scaled_lr, validate_solver)
from .utils import (all_gather_object, barrier, get_rank, get_rng_state, get_world_size, init_distributed, is_dist,
                    resolve_device, seed_everything, set_deterministic, set_rng_state, to_device)

CONFIG_FILE = "config.yaml"

#: the model builder :func:`train` uses unless given another ``build_model_fn``
default_build_model = build_model


def pretrained_builder(weights: str | os.PathLike) -> Callable[[ModelConfig], nn.Module]:
    """A ``build_model_fn`` for :func:`train`: the configured detector, initialised from
    ``weights`` (a released ``.pth`` or a ``.safetensors``) -- fine-tuning, with
    ``model.reinit_classifier=true`` for another class count::

        train(load_config(name, ["model.num_classes=7", "model.reinit_classifier=true", ...]), out,
              build_model_fn=pretrained_builder("atss_R_50_FPN_1x.pth"))
    """
    def build(model_cfg: ModelConfig) -> nn.Module:
        model = build_model(model_cfg)
        ck.load_weights(model, weights)
        return model

    return build


def _check_classes(cfg: Config, dataset: CocoDetection) -> None:
    n = len(dataset.category_ids)
    if n != cfg.model.num_classes:
        raise ConfigError(f"the dataset has {n} categories but model.num_classes={cfg.model.num_classes} "
                          f"(override with model.num_classes={n})")


# =================================================================================== training
@dataclass
class TrainResult:
    iteration: int  # completed iterations
    interrupted: bool = False
    signal: Optional[int] = None
    metrics: Optional[dict[str, Any]] = None
    checkpoint: Optional[Path] = None
    output_dir: Optional[Path] = None

    @property
    def exit_code(self) -> int:
        """0 when training finished; ``128 + signal`` (130 SIGINT, 143 SIGTERM) when it was
        stopped by a signal after saving a checkpoint."""
        return 128 + int(self.signal) if self.interrupted and self.signal else 0


@dataclass
class _Run:
    """What one training run holds once it is set up."""

    cfg: Config
    out: Path
    device: torch.device
    rank: int
    world: int
    per_rank: int  # images per process and iteration
    dataset: CocoDetection
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: WarmupMultiStepLR
    scaler: Optional[torch.amp.GradScaler]
    meta: dict[str, str]  # stored in every checkpoint's metadata
    ddp_model: Optional[nn.Module] = None  # the model the forward pass goes through
    val_dataset: Optional[CocoDetection] = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def say(self, msg: str) -> None:
        """A status line on stderr, from rank 0."""
        if self.main:
            print(f"assigndet: {msg}", file=sys.stderr, flush=True)

    def validation_set(self) -> CocoDetection:
        if self.val_dataset is None:
            self.val_dataset = build_dataset(self.cfg, train=False)
        return self.val_dataset


def _setup(cfg: Config, out: Path, resume: bool, build_model_fn: Callable[[ModelConfig], nn.Module]
           ) -> tuple[_Run, Optional[Path]]:
    """Device, process group, runtime checks, ``config.yaml``, the training set, the model (same
    initial weights on every rank), optimiser, schedule and grad scaler; and the checkpoint to
    resume from (None: start from scratch)."""
    device = resolve_device(cfg.device)
    init_distributed(device)
    rank, world = get_rank(), get_world_size()
    per_rank = validate_solver(cfg.solver, world)
    check_amp(cfg.solver.amp, device)
    set_deterministic(cfg.deterministic)
    ckpt_path = ck.last_checkpoint(out) if resume else None
    if rank == 0:
        if resume and ckpt_path is None:
            print(f"assigndet: no checkpoint in {out}; starting from scratch", file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)
        ck.atomic_write_text(out / CONFIG_FILE, config_to_yaml(cfg))
    dataset = build_dataset(cfg, train=True)
    _check_classes(cfg, dataset)
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = build_model_fn(cfg.model).to(device)
    seed_everything(cfg.seed + rank)
    optimizer = build_optimizer(model, cfg.solver)
    meta = {"class_names": json.dumps(list(dataset.class_names)),
            "category_ids": json.dumps([int(c) for c in dataset.category_ids]), "config": config_to_yaml(cfg)}
    run = _Run(cfg=cfg, out=out, device=device, rank=rank, world=world, per_rank=per_rank, dataset=dataset,
               model=model, optimizer=optimizer, scheduler=WarmupMultiStepLR(optimizer, cfg.solver),
               scaler=grad_scaler(cfg.solver.amp), meta=meta)
    return run, ckpt_path


def _resume(run: _Run, ckpt_path: Path) -> int:
    """Restore model, optimiser, schedule, grad scaler and this rank's RNG states from
    ``ckpt_path``; returns the iteration to continue from."""
    ck.load_weights(run.model, ckpt_path)
    state = ck.load_training_state(ck.state_path_for(ckpt_path))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    start_iter = int(state["iteration"])
    rngs = state.get("rng", [])
    if len(rngs) == run.world:
        set_rng_state(rngs[run.rank])
    else:
        run.say(f"checkpoint was written by {len(rngs)} processes, now {run.world}: RNG states not restored")
    run.say(f"resuming from {ckpt_path.name} at iteration {start_iter}")
    return start_iter


def _wrap_ddp(run: _Run) -> None:
    run.ddp_model = run.model
    if run.world > 1:
        run.ddp_model = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)


def _reduce_losses(loss_dict: dict[str, torch.Tensor], total: torch.Tensor, stop: bool
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


@dataclass
class _Step:
    losses: dict[str, float]  # means over processes
    total: float
    lr: float  # of the non-bias group, used by this step
    stop: bool  # some process was asked to stop


def _train_step(run: _Run, images, targets, it: int, stop: StopFlag) -> _Step:
    """Forward (autocast), loss reduction over processes (with the stop flags, read after the
    forward so that a signal during it stops this iteration), backward, clipping, optimiser and
    schedule step. Raises ``FloatingPointError`` before touching the weights when a loss is
    not finite."""
    with autocast(run.cfg.solver.amp, run.device):
        loss_dict = run.ddp_model(images, targets)
    total = sum(loss_dict.values())
    losses, total_val, stop_now = _reduce_losses(loss_dict, total, stop.signum is not None)
    if not (math.isfinite(total_val) and all(math.isfinite(v) for v in losses.values())):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        raise FloatingPointError(f"non-finite loss at iteration {it}: {shown}; no checkpoint was "
                                 "written for this iteration (the last one saved is still valid)")
    optimizer_step(total, run.model, run.optimizer, run.scaler, run.cfg.solver.clip_grad_norm)
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    return _Step(losses, total_val, lr, stop_now)


def _save_checkpoint(run: _Run, iteration: int, name: str) -> Optional[Path]:
    """Weights + training state (optimiser, schedule, scaler, every rank's RNG) at ``iteration``;
    every rank waits until rank 0 has written it."""
    rngs = all_gather_object(get_rng_state())  # every rank's RNG, restored per rank on resume
    state: dict[str, Any] = {"iteration": int(iteration), "optimizer": run.optimizer.state_dict(),
                             "scheduler": run.scheduler.state_dict(), "rng": rngs, "world_size": int(run.world),
                             "config": config_to_yaml(run.cfg)}
    if run.scaler is not None:
        state["scaler"] = run.scaler.state_dict()
    path = None
    if run.main:
        path = ck.save_checkpoint(run.out, name, model=run.model, state=state,
                                  metadata={**run.meta, "iteration": str(iteration)})
    barrier()  # nobody leaves (or gets killed by torchrun) before the checkpoint is complete
    return path


def _after_step(run: _Run, result: TrainResult, done: int, log: MetricsLog) -> None:
    """The periodic checkpoint and evaluation after ``done`` iterations (not at the end)."""
    solver = run.cfg.solver
    if done >= solver.max_iter:
        return
    if solver.checkpoint_period > 0 and done % solver.checkpoint_period == 0:
        result.checkpoint = _save_checkpoint(run, done, ck.checkpoint_name(done))
    if solver.eval_period > 0 and done % solver.eval_period == 0:
        m = evaluate(run.model, run.cfg, run.out, dataset=run.validation_set(), iteration=done, verbose=False)
        log.log_eval(m, done)
        run.model.train()


def _stop(run: _Run, result: TrainResult, done: int, signum: Optional[int], progress: Progress) -> None:
    """Save a checkpoint after a stop request and mark ``result`` interrupted."""
    name = ck.checkpoint_name(done)
    result.checkpoint = _save_checkpoint(run, done, name)
    result.interrupted, result.signal = True, int(signum if signum is not None else signal.SIGTERM)
    progress.close()
    run.say(f"stopped at iteration {done}/{run.cfg.solver.max_iter}; checkpoint {name} saved in {run.out}; "
            f"continue with --resume (exit code {result.exit_code})")


def _loop(run: _Run, result: TrainResult, start_iter: int, log: MetricsLog, progress: Progress) -> None:
    """Iterations ``start_iter .. max_iter - 1``; returns early (``result.interrupted``) on a signal."""
    solver = run.cfg.solver
    loader = build_train_loader(run.dataset, batch_size_per_rank=run.per_rank, num_workers=run.cfg.data.num_workers,
                                world_size=run.world, rank=run.rank, seed=run.cfg.seed,
                                hflip_prob=run.cfg.data.hflip_prob, aspect_grouping=run.cfg.data.aspect_grouping,
                                start_iter=start_iter)
    log_period = max(1, solver.log_period)
    run.model.train()
    data_iter = iter(loader)
    with StopFlag() as stop:
        for it in range(start_iter, solver.max_iter):
            t0 = time.perf_counter()
            images, targets = to_device(*next(data_iter), run.device)
            t_data = time.perf_counter() - t0
            step = _train_step(run, images, targets, it, stop)
            done = result.iteration = it + 1
            if run.main and (it % log_period == 0 or done == solver.max_iter or step.stop):
                log.log({"iteration": it, **step.losses, "total": step.total, "lr": step.lr,
                         "time": time.perf_counter() - t0, "data_time": t_data})
            progress.update(step.total, step.lr)
            if step.stop:
                _stop(run, result, done, stop.signum, progress)
                return
            _after_step(run, result, done, log)


def _finish(run: _Run, result: TrainResult, log: MetricsLog, evaluate_at_end: bool) -> None:
    """The final checkpoint and evaluation."""
    max_iter = run.cfg.solver.max_iter
    result.checkpoint = _save_checkpoint(run, max_iter, ck.FINAL_NAME)
    if evaluate_at_end:
        result.metrics = evaluate(run.model, run.cfg, run.out, dataset=run.validation_set(), iteration=max_iter)
        log.log_eval(result.metrics, max_iter)


def train(cfg: Config, output_dir: str | os.PathLike, *, resume: bool = False,
          build_model_fn: Optional[Callable[[ModelConfig], nn.Module]] = None,
          progress: bool = True, evaluate_at_end: bool = True) -> TrainResult:
    """Train ``cfg`` for ``cfg.solver.max_iter`` iterations, writing into ``output_dir``.

    One process, or one per device under ``torchrun`` (the process group is created from the
    environment when ``WORLD_SIZE > 1``: gloo on CPU, nccl on CUDA). ``resume=True`` continues
    from ``output_dir/last_checkpoint`` (model, optimizer, scheduler, grad scaler, iteration,
    RNG states and data position) -- the run then equals an uninterrupted one. ``build_model_fn``
    replaces :func:`assigndet.detectors.build_model` (tests, custom models;
    :func:`pretrained_builder` starts from released weights).

    Returns a :class:`TrainResult` (see ``exit_code`` for signals). Raises
    :class:`FloatingPointError` naming the iteration when a loss becomes non-finite (nothing is
    saved then), :class:`~assigndet.errors.ConfigError` / ``DatasetError`` for bad settings.
    """
    out = Path(output_dir)
    run, ckpt_path = _setup(cfg, out, resume, build_model_fn or default_build_model)
    start_iter = _resume(run, ckpt_path) if ckpt_path is not None else 0
    _wrap_ddp(run)
    result = TrainResult(iteration=start_iter, output_dir=out)
    max_iter = cfg.solver.max_iter
    if start_iter >= max_iter:
        run.say(f"training already complete ({start_iter}/{max_iter} iterations)")
        if evaluate_at_end and not (out / EVAL_FILE).exists():
            result.metrics = evaluate(run.model, cfg, out, iteration=start_iter)
        result.checkpoint = ckpt_path
        return result
    log = MetricsLog(out, start_iter, enabled=run.main)
    bar = Progress(max_iter, start_iter, enabled=run.main and progress)
    try:
        _loop(run, result, start_iter, log, bar)
        if not result.interrupted:
            bar.close()
            _finish(run, result, log, evaluate_at_end)
    finally:
        bar.close()
        log.close()
    return result


def destroy_distributed() -> None:
    if is_dist():
        torch.distributed.destroy_process_group()


__all__ = [
    "train", "evaluate", "inference", "TrainResult", "build_optimizer", "WarmupMultiStepLR", "lr_factor",
    "scaled_lr", "validate_solver", "autocast", "check_amp", "build_dataset", "dataset_paths", "default_build_model",
    "pretrained_builder", "destroy_distributed", "METRICS_FILE", "EVAL_FILE", "EVAL_HISTORY_FILE", "DETECTIONS_FILE",
    "CONFIG_FILE",
]
