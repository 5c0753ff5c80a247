"""Iteration-based training (one process or ``torchrun``), with periodic checkpoints and evaluation.

The engine knows only the detector contract (torchvision's): ``model(images, targets)`` returns a
dict of named losses (total = their sum) in train mode. Files written into the output directory (rank 0): ``config.yaml`` and
``run.json`` (:mod:`assigndet.runs`); ``metrics.jsonl`` (one JSON object per logged iteration:
``iteration`` (0-based), each loss, ``total``, ``lr`` (non-bias group), ``time``, ``data_time``;
losses are means over all processes) and ``tensorboard/``; ``model_XXXXXXX.*``,
``model_final.*``, ``last_checkpoint`` (:mod:`assigndet.checkpoints`); ``detections.json``,
``eval.json``, ``eval_history.jsonl`` (:func:`assigndet.evaluation.evaluate`).

``metrics.jsonl`` also holds the assignment statistics of the dense detectors (``assign/...``) and
the run's plots are written at the end (:func:`assigndet.viz.write_run_plots`).

Signals: SIGINT/SIGTERM set a flag; the loop finishes the current iteration, saves a checkpoint,
and :func:`train` returns ``interrupted=True``, ``exit_code = 128 + signal``; ``resume=True`` then
continues exactly. Any other exception after the first iteration first saves an emergency checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from . import checkpoints as ck
from . import runs
from .config import Config, ModelConfig, config_to_yaml
from .data import CocoDetection, build_dataset, build_train_loader, dataset_paths
from .detectors import build_model
from .detectors.assignment_stats import assignment_stats
from .errors import ConfigError
from .evaluation import DETECTIONS_FILE, EVAL_FILE, EVAL_HISTORY_FILE, evaluate, inference
from .monitor import METRICS_FILE, MetricsLog, Progress, StopFlag
from .nn.syncbn import convert_sync_batchnorm
from .solver import (WarmupMultiStepLR, apply_step, autocast, backward, build_optimizer, check_amp, grad_scaler,
                     lr_factor, reduce_losses, scaled_lr, validate_solver)
from .utils import (all_gather_object, barrier, get_rank, get_rng_state, get_world_size, init_distributed, is_dist,
                    resolve_device, seed_everything, set_deterministic, status, to_device)
from .viz import write_run_plots

CONFIG_FILE = runs.CONFIG_FILE

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
        """0: finished; ``128 + signal`` (130 SIGINT, 143 SIGTERM): stopped after saving a checkpoint."""
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
    changes: Optional[dict[str, Any]] = None  # resuming: the accepted config changes (None: from scratch)
    rng_done: Optional[dict[str, Any]] = None  # this rank's RNG after the last completed iteration
    busy: str = ""  # "update" / "save" while the weights change / a checkpoint is written

    @property
    def main(self) -> bool:
        return self.rank == 0

    def say(self, msg: str) -> None:  # a status line on stderr, from rank 0
        status(msg)

    @property
    def trainables(self) -> runs.Trainables:
        return runs.Trainables(self.model, self.optimizer, self.scheduler, self.scaler)

    def validation_set(self) -> CocoDetection:
        if self.val_dataset is None:
            self.val_dataset = build_dataset(self.cfg, train=False)
        return self.val_dataset


def _open_run_dir(cfg: Config, out: Path, resume: bool, overwrite: bool, preset: Optional[str], rank: int) -> bool:
    """After :func:`assigndet.runs.check` and the dataset checks (a typo in ``data.root`` must
    not leave a run behind): rank 0 prepares the directory (:func:`assigndet.runs.prepare`).
    Returns whether there is a checkpoint to resume from."""
    barrier()  # every process has checked before rank 0 writes
    if rank == 0:
        runs.prepare(out, cfg, resume=resume, overwrite=overwrite, preset=preset, say=status)
    barrier()
    if resume and not runs.checkpoint_candidates(out):
        status(f"no checkpoint in {out}; starting from scratch")
        return False
    return resume


def _setup(cfg: Config, out: Path, resume: bool, overwrite: bool, preset: Optional[str],
           build_model_fn: Callable[[ModelConfig], nn.Module]) -> _Run:
    """Device, process group, runtime checks, the run directory (:func:`_open_run_dir`), the
    training set, the model (same initial weights on every rank), optimiser, schedule and grad
    scaler."""
    device = resolve_device(cfg.device)
    init_distributed(device)
    rank, world = get_rank(), get_world_size()
    per_rank = validate_solver(cfg.solver, world)
    check_amp(cfg.solver.amp, device)
    set_deterministic(cfg.deterministic)
    changes = runs.check(out, cfg, resume=resume, overwrite=overwrite)  # read-only, every process
    dataset = build_dataset(cfg, train=True)
    _check_classes(cfg, dataset)
    if not _open_run_dir(cfg, out, resume, overwrite, preset, rank):
        changes = None  # nothing to resume from
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = build_model_fn(cfg.model).to(device)
    seed_everything(cfg.seed + rank)
    optimizer = build_optimizer(model, cfg.solver)
    meta = {"class_names": json.dumps(list(dataset.class_names)),
            "category_ids": json.dumps([int(c) for c in dataset.category_ids]), "config": config_to_yaml(cfg)}
    return _Run(cfg=cfg, out=out, device=device, rank=rank, world=world, per_rank=per_rank, dataset=dataset,
                model=model, optimizer=optimizer, scheduler=WarmupMultiStepLR(optimizer, cfg.solver),
                scaler=grad_scaler(cfg.solver.amp), meta=meta, changes=changes)


def _wrap_ddp(run: _Run) -> None:
    """DDP over the model when there are several processes; with ``solver.sync_bn`` its
    BatchNorm layers (not FrozenBN) first compute their statistics over all processes' batches
    (torch's SyncBatchNorm on CUDA, :class:`~assigndet.nn.syncbn.AllReduceBatchNorm2d` on CPU,
    same parameters, so the optimiser is unaffected)."""
    run.ddp_model = run.model
    if run.world > 1:
        if run.cfg.solver.sync_bn:
            run.model, n = convert_sync_batchnorm(run.model, run.device)
            if n:
                run.say(f"{n} BatchNorm layers synchronised across {run.world} processes (solver.sync_bn)")
        run.ddp_model = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)


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
    losses, total_val, stop_now = reduce_losses(loss_dict, total, stop.signum is not None)
    if not (math.isfinite(total_val) and all(math.isfinite(v) for v in losses.values())):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        raise FloatingPointError(f"non-finite loss at iteration {it}: {shown}; no checkpoint was "
                                 "written for this iteration (the last one saved is still valid)")
    backward(total, run.model, run.optimizer, run.scaler, run.cfg.solver.clip_grad_norm)
    run.busy = "update"  # an exception from here to the end leaves no consistent state to save
    apply_step(run.optimizer, run.scaler)
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    run.busy, run.rng_done = "", get_rng_state()
    return _Step(losses, total_val, lr, stop_now)


def _save_checkpoint(run: _Run, iteration: int, name: str) -> Optional[Path]:
    """Weights + training state (optimiser, schedule, scaler, every rank's RNG) at ``iteration``;
    every rank waits until rank 0 has written it. Then the periodic checkpoints beyond
    ``solver.keep_last`` are deleted."""
    run.busy = "save"
    rngs = all_gather_object(get_rng_state())  # every rank's RNG, restored per rank on resume
    path = _write_checkpoint(run, iteration, name, rngs)
    barrier()  # nobody leaves (or gets killed by torchrun) before the checkpoint is complete
    run.busy = ""
    if run.main:
        runs.prune_checkpoints(run.out, run.cfg.solver.keep_last)
    return path


def _write_checkpoint(run: _Run, iteration: int, name: str, rngs: list[Any]) -> Optional[Path]:
    """Rank 0 writes checkpoint ``name`` with the RNG states ``rngs`` (one per process)."""
    if not run.main:
        return None
    return run.trainables.save(run.out, name, iteration, rngs=rngs, world=run.world, config=config_to_yaml(run.cfg),
                               metadata={**run.meta, "iteration": str(iteration)})


_NO_EMERGENCY = {"update": "the failure came while the weights were being updated",
                 "save": "the failure came while a checkpoint was being saved"}


def _emergency_save(run: _Run, done: int, error: BaseException) -> None:
    """After ``error`` at iteration ``done`` (> the start): rank 0 saves ``model_emergency_N``
    (no collective: the other processes may be gone) and points ``last_checkpoint`` at it, so
    that ``--resume`` continues from there; a failure to save is said, never hides ``error``."""
    if not run.main:
        return
    if run.busy or isinstance(error, FloatingPointError):  # no consistent state / a NaN would come back
        why = _NO_EMERGENCY.get(run.busy, "a non-finite loss would come back on resume")
        run.say(f"no emergency checkpoint ({why}); last_checkpoint is unchanged")
        return
    name = runs.emergency_name(done)
    try:
        rngs = [run.rng_done] if run.world == 1 and run.rng_done is not None else []
        _write_checkpoint(run, done, name, rngs)
    except Exception as e:  # noqa: BLE001  (the original error matters more)
        run.say(f"could not save an emergency checkpoint: {e}")
        return
    run.say(f"training failed at iteration {done}: saved {name} in {run.out}; fix the cause and continue with "
            "--resume")


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
                                start_iter=start_iter, min_size_train=run.cfg.model.input.min_size_train)
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
            if it % log_period == 0 or done == solver.max_iter or step.stop:
                assign = assignment_stats(run.model)  # every process (all-reduced sums); then a new period
                if run.main:
                    log.log({"iteration": it, **step.losses, "total": step.total, "lr": step.lr,
                             "time": time.perf_counter() - t0, "data_time": t_data, **assign})
            progress.update(step.total, step.lr)
            if step.stop:
                _stop(run, result, done, stop.signum, progress)
                return
            _after_step(run, result, done, log)


def _finish(run: _Run, result: TrainResult, log: MetricsLog, evaluate_at_end: bool, progress: bool) -> None:
    """The final checkpoint and evaluation (with a progress bar when ``progress``)."""
    result.checkpoint = _save_checkpoint(run, max_iter := run.cfg.solver.max_iter, ck.FINAL_NAME)
    if evaluate_at_end:
        result.metrics = evaluate(run.model, run.cfg, run.out, dataset=run.validation_set(), iteration=max_iter,
                                  progress=progress)
        log.log_eval(result.metrics, max_iter)


def _resume(run: _Run) -> tuple[int, Optional[Path]]:
    """The iteration to start from and the checkpoint restored (0, None: from scratch)."""
    if run.changes is None:
        return 0, None
    start_iter, path = runs.resume(run.out, run.trainables, run.rank, run.world, run.say)
    if run.main and (run.changes or start_iter < run.cfg.solver.max_iter):  # a finished run re-opened: no entry
        runs.record_resume(run.out, start_iter, run.changes, run.say)
    return start_iter, path


def train(cfg: Config, output_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          preset: Optional[str] = None, build_model_fn: Optional[Callable[[ModelConfig], nn.Module]] = None,
          progress: bool = True, evaluate_at_end: bool = True) -> TrainResult:
    """Train ``cfg`` for ``cfg.solver.max_iter`` iterations, writing into ``output_dir``.

    One process, or one per device under ``torchrun`` (the process group is created from the
    environment when ``WORLD_SIZE > 1``: gloo on CPU, nccl on CUDA). ``build_model_fn`` replaces
    :func:`assigndet.detectors.build_model` (tests, custom models; :func:`pretrained_builder`).

    The run directory (:mod:`assigndet.runs`): a fresh run refuses an ``output_dir`` that holds
    a run unless ``overwrite=True`` (which deletes that run's files, nothing else).
    ``resume=True`` continues from ``last_checkpoint`` (model, optimiser, schedule, grad scaler,
    iteration, RNG states, data position: the run then equals an uninterrupted one), or from the
    previous checkpoint when that one is unreadable; a ``cfg`` that differs from the saved
    ``config.yaml`` outside :data:`assigndet.runs.RESUMABLE_KEYS` is refused, accepted changes
    are recorded in ``run.json`` (with ``preset``, the preset's name). An exception after the
    first iteration saves ``model_emergency_N`` first (:func:`_emergency_save`).

    Returns a :class:`TrainResult` (see ``exit_code`` for signals). Raises
    :class:`FloatingPointError` naming the iteration when a loss becomes non-finite (nothing is
    saved then: it would come back on resume), :class:`~assigndet.errors.UserError` for bad
    settings, directories, data or a full disk.
    """
    out = Path(output_dir)
    run = _setup(cfg, out, resume, overwrite, preset, build_model_fn or default_build_model)
    if evaluate_at_end or cfg.solver.eval_period > 0:
        run.validation_set()  # its JSON and image files are checked before the first iteration
    start_iter, ckpt_path = _resume(run)
    run.rng_done = get_rng_state()
    _wrap_ddp(run)
    result = TrainResult(iteration=start_iter, output_dir=out, checkpoint=ckpt_path)
    if start_iter >= cfg.solver.max_iter:
        run.say(f"training already complete ({start_iter}/{cfg.solver.max_iter} iterations)")
        if evaluate_at_end and not (out / EVAL_FILE).exists():
            result.metrics = evaluate(run.model, cfg, out, iteration=start_iter)
        return result
    log = MetricsLog(out, start_iter, enabled=run.main)
    bar = Progress(cfg.solver.max_iter, start_iter, enabled=run.main and progress)
    try:
        _loop(run, result, start_iter, log, bar)
        if not result.interrupted:
            bar.close()
            _finish(run, result, log, evaluate_at_end, progress)
    except Exception as e:
        bar.close()
        if result.iteration > start_iter and not (result.checkpoint and result.checkpoint.stem == ck.FINAL_NAME):
            _emergency_save(run, result.iteration, e)
        raise
    finally:
        bar.close()
        log.close()
        if run.main:
            write_run_plots(out)  # never raises
    return result


def destroy_distributed() -> None:
    if is_dist():
        torch.distributed.destroy_process_group()


__all__ = ["train", "TrainResult", "pretrained_builder", "default_build_model", "destroy_distributed", "evaluate",
           "inference", "build_dataset", "dataset_paths", "scaled_lr", "lr_factor", "build_optimizer", "WarmupMultiStepLR",
           "validate_solver", "autocast", "check_amp", "METRICS_FILE", "EVAL_FILE", "EVAL_HISTORY_FILE", "DETECTIONS_FILE",
           "CONFIG_FILE"]
