"""Iteration-based training, distributed inference and COCO evaluation.

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
* ``detections.json``, ``eval.json``, ``eval_history.jsonl``  see :func:`evaluate`

Signals: SIGINT/SIGTERM set a flag; the loop finishes the current iteration, saves a checkpoint,
and :func:`train` returns a result with ``interrupted=True`` and ``exit_code = 128 + signal``
(130 for SIGINT, 143 for SIGTERM -- the shell convention for "stopped by that signal", distinct
from 0 = finished, 1 = crash and 2 = user error). ``train(..., resume=True)`` then continues
exactly where it stopped. A second SIGINT raises ``KeyboardInterrupt`` immediately.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from . import checkpoints as ck
from .config import Config, ConfigError, ModelConfig, SolverConfig, config_to_yaml
from .utils import (all_gather_object, barrier, broadcast_object, get_rank, get_rng_state, get_world_size,
                    init_distributed, is_dist, is_main_process, resolve_device, seed_everything, set_deterministic,
                    set_rng_state)

logger = logging.getLogger("assigndet")

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
EVAL_HISTORY_FILE = "eval_history.jsonl"
DETECTIONS_FILE = "detections.json"
CONFIG_FILE = "config.yaml"


# ============================================================================ optimiser / schedule
def scaled_lr(solver: SolverConfig) -> float:
    """Linear scaling rule: ``base_lr * ims_per_batch / reference_batch`` (total batch)."""
    return solver.base_lr * solver.ims_per_batch / solver.reference_batch


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.SGD:
    """SGD with momentum and two parameter groups (trainable parameters only):

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
    return torch.optim.SGD(groups, lr=lr, momentum=solver.momentum)


def lr_factor(iteration: int, solver: SolverConfig) -> float:
    """Multiplier of the (scaled) base LR used at 0-based ``iteration`` (SPEC §1.8).

    Warm-up for ``iteration < warmup_iters``: ``"constant"`` → ``warmup_factor``;
    ``"linear"`` → ``warmup_factor · (1 − α) + α`` with ``α = iteration / warmup_iters``.
    Times ``gamma ** (number of steps ≤ iteration)``.
    """
    decay = solver.gamma ** sum(1 for s in solver.steps if s <= iteration)
    if iteration >= solver.warmup_iters:
        return decay
    if solver.warmup_method == "constant":
        warm = solver.warmup_factor
    elif solver.warmup_method == "linear":
        alpha = iteration / solver.warmup_iters
        warm = solver.warmup_factor * (1 - alpha) + alpha
    else:
        raise ConfigError(f"solver.warmup_method must be 'constant' or 'linear', got {solver.warmup_method!r}")
    return warm * decay


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """``lr_k = initial_lr · lr_factor(k)`` in closed form (no accumulated products, so a
    resumed schedule is bit-identical). Step it after every optimiser step."""

    def __init__(self, optimizer: torch.optim.Optimizer, solver: SolverConfig, last_epoch: int = -1) -> None:
        self.solver_steps = list(solver.steps)
        self.gamma = float(solver.gamma)
        self.warmup_iters = int(solver.warmup_iters)
        self.warmup_factor = float(solver.warmup_factor)
        self.warmup_method = str(solver.warmup_method)
        lr_factor(0, self._solver())  # validates warmup_method
        super().__init__(optimizer, last_epoch)

    def _solver(self) -> SolverConfig:
        return SolverConfig(steps=self.solver_steps, gamma=self.gamma, warmup_iters=self.warmup_iters,
                            warmup_factor=self.warmup_factor, warmup_method=self.warmup_method)

    def get_lr(self) -> list[float]:
        f = lr_factor(max(self.last_epoch, 0), self._solver())
        return [base * f for base in self.base_lrs]


def validate_solver(solver: SolverConfig, world_size: int) -> int:
    """Check the solver settings; return the per-process batch size."""
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
    if solver.warmup_method not in ("constant", "linear"):
        raise ConfigError(f"solver.warmup_method must be 'constant' or 'linear', got {solver.warmup_method!r}")
    if solver.amp not in ("off", "bf16", "fp16"):
        raise ConfigError(f"solver.amp must be 'off', 'bf16' or 'fp16', got {solver.amp!r}")
    return solver.ims_per_batch // world_size


# ================================================================================= AMP helpers
def check_amp(amp: str, device: torch.device) -> None:
    if amp not in ("off", "bf16", "fp16"):
        raise ConfigError(f"solver.amp must be 'off', 'bf16' or 'fp16', got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("solver.amp=fp16 needs a CUDA device (float16 autocast + GradScaler); "
                          "use solver.amp=bf16 on CPU")


def autocast(amp: str, device: torch.device):
    """The autocast context for ``amp`` ∈ {off, bf16, fp16} on ``device``."""
    check_amp(amp, device)
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ==================================================================================== building
def default_build_model(model_cfg: ModelConfig) -> nn.Module:
    from .detectors import build_model  # lazy: the engine does not depend on model code

    return build_model(model_cfg)


def _data_path(root: str, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else Path(root) / q


def build_dataset(cfg: Config, *, train: bool):
    """The training or validation :class:`~assigndet.data.CocoDetection` named by ``cfg.data``."""
    from .data import CocoDetection

    d = cfg.data
    images = _data_path(d.root, d.train_images if train else d.val_images)
    ann = _data_path(d.root, d.train_ann if train else d.val_ann)
    return CocoDetection(images, ann, train=train, offset=cfg.model.offset, filter_empty=d.filter_empty,
                         skip_corrupt=d.skip_corrupt)


def _check_classes(cfg: Config, dataset) -> None:
    n = len(dataset.category_ids)
    if n != cfg.model.num_classes:
        raise ConfigError(f"the dataset has {n} categories but model.num_classes={cfg.model.num_classes} "
                          f"(override with model.num_classes={n})")


def _to_device(images: Sequence[torch.Tensor], targets: Optional[Sequence[dict]], device: torch.device):
    images = [im.to(device, non_blocking=True) for im in images]
    if targets is None:
        return images, None
    targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


# =================================================================================== inference
@torch.no_grad()
def inference(model: nn.Module, images: Iterable[torch.Tensor], *, batch_size: int = 1,
              device: Optional[torch.device] = None, amp: str = "off") -> list[dict[str, torch.Tensor]]:
    """Run ``model`` (eval mode) over ``images`` (each ``[3, H, W]`` uint8 or float 0..1);
    returns one ``dict(boxes, scores, labels)`` per image, on the CPU."""
    model = ck.unwrap_model(model)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[dict[str, torch.Tensor]] = []
    batch: list[torch.Tensor] = []
    try:
        for im in list(images) + [None]:  # type: ignore[list-item]
            if im is not None:
                batch.append(im)
            if batch and (im is None or len(batch) == batch_size):
                with autocast(amp, device):
                    preds = model(_to_device(batch, None, device)[0])
                out += [{k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
                         for k, v in p.items()} for p in preds]
                batch = []
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, cfg: Config, output_dir: Optional[str | os.PathLike] = None, *, dataset=None,
             iteration: Optional[int] = None, verbose: bool = True) -> dict[str, Any]:
    """COCO evaluation of ``model`` on ``cfg.data``'s validation split (or ``dataset``).

    Each process infers its strided shard of the first ``cfg.test.max_images`` images (all when
    0); rank 0 gathers the detections, writes ``detections.json`` (COCO results) and
    ``eval.json`` (metrics as fractions, COCO AP under ``"AP"``, ``"per_class"``), and appends a
    line to ``eval_history.jsonl``. Every process returns the metrics. The global RNG states
    are left untouched (so evaluating during training does not change the training run).
    """
    from .data import build_test_loader
    from .evaluation import evaluate_coco, format_metrics, predictions_to_coco, save_results_json, write_eval_json

    model = ck.unwrap_model(model)
    device = next(model.parameters()).device
    if dataset is None:
        dataset = build_dataset(cfg, train=False)
    base = dataset
    if cfg.test.max_images > 0 and cfg.test.max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(cfg.test.max_images))
    world, rank = get_world_size(), get_rank()
    batch_size = max(1, cfg.test.ims_per_batch // world)
    loader = build_test_loader(dataset, batch_size=batch_size, num_workers=cfg.test.num_workers,
                               world_size=world, rank=rank)
    amp = cfg.solver.amp if cfg.solver.amp != "fp16" or device.type == "cuda" else "off"
    rng = get_rng_state()
    was_training = model.training
    model.eval()
    local: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for images, targets in loader:
            with autocast(amp, device):
                preds = model(_to_device(images, None, device)[0])
            for t, p in zip(targets, preds):
                local[int(t["image_id"])] = {k: v.detach().float().cpu() if v.is_floating_point() else
                                             v.detach().cpu() for k, v in p.items()}
    finally:
        model.train(was_training)
        set_rng_state(rng)

    gathered = all_gather_object(local) if is_dist() else [local]
    metrics: Optional[dict[str, Any]] = None
    if is_main_process():
        preds: dict[int, dict[str, torch.Tensor]] = {}
        for part in gathered:
            preds.update(part)
        results = predictions_to_coco(preds, base.category_ids, offset=base.offset)
        metrics = evaluate_coco(str(base.ann_file), results, image_ids=list(preds.keys()))
        if iteration is not None:
            metrics["iteration"] = int(iteration)
        if output_dir is not None:
            out = Path(output_dir)
            save_results_json(out / DETECTIONS_FILE, results)
            write_eval_json(out / EVAL_FILE, metrics)
            with open(out / EVAL_HISTORY_FILE, "a") as f:
                f.write(json.dumps({k: v for k, v in metrics.items() if k != "per_class"}) + "\n")
        if verbose:
            head = f"evaluation on {metrics['num_images']} images" + (f" at iteration {iteration}" if iteration
                                                                         is not None else "")
            print(f"{head}:\n{format_metrics(metrics)}", flush=True)
    metrics = broadcast_object(metrics)
    return metrics  # type: ignore[return-value]


# ==================================================================================== training
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


class _StopFlag:
    """SIGINT/SIGTERM handlers that only set a flag (main thread only; restored on exit)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum
        if is_main_process():
            print(f"\nassigndet: received {signal.Signals(signum).name}; stopping after this iteration "
                  "and saving a checkpoint", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class _MetricsLog:
    """metrics.jsonl + TensorBoard on rank 0 (no-op on other ranks)."""

    def __init__(self, output_dir: Path, start_iter: int, enabled: bool) -> None:
        self.enabled = enabled
        self.tb = None
        self.path = output_dir / METRICS_FILE
        if not enabled:
            return
        if self.path.exists():  # drop lines from beyond the checkpoint we resume from
            keep = []
            for line in self.path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("iteration", -1) < start_iter:
                        keep.append(line)
            self.path.write_text("".join(line + "\n" for line in keep))
        self.file = open(self.path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_iter if start_iter else None)
        except Exception as e:  # noqa: BLE001  (tensorboard missing or broken: keep training)
            logger.warning("TensorBoard logging disabled: %s", e)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            it = record["iteration"]
            for k, v in record.items():
                if k != "iteration" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k if k in ("lr", "time", "data_time") else f"loss/{k}", v, it)

    def log_eval(self, metrics: dict[str, Any], iteration: int) -> None:
        if self.enabled and self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, float) and v >= 0:
                    self.tb.add_scalar(f"eval/{k}", v, iteration)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


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


def _training_state(iteration: int, optimizer, scheduler, scaler, cfg: Config, world: int) -> dict[str, Any]:
    rngs = all_gather_object(get_rng_state())  # every rank's RNG, restored per rank on resume
    state: dict[str, Any] = {"iteration": int(iteration), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "rng": rngs, "world_size": int(world),
                             "config": config_to_yaml(cfg)}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def _save(output_dir: Path, name: str, model, state: dict[str, Any], meta: dict[str, str]) -> Optional[Path]:
    path = None
    if is_main_process():
        path = ck.save_checkpoint(output_dir, name, model=model, state=state,
                                  metadata={**meta, "iteration": str(state["iteration"])})
    barrier()  # nobody leaves (or gets killed by torchrun) before the checkpoint is complete
    return path


def train(cfg: Config, output_dir: str | os.PathLike, *, resume: bool = False,
          build_model_fn: Optional[Callable[[ModelConfig], nn.Module]] = None,
          progress: bool = True, evaluate_at_end: bool = True) -> TrainResult:
    """Train ``cfg`` for ``cfg.solver.max_iter`` iterations, writing into ``output_dir``.

    One process, or one per device under ``torchrun`` (the process group is created from the
    environment when ``WORLD_SIZE > 1``: gloo on CPU, nccl on CUDA). ``resume=True`` continues
    from ``output_dir/last_checkpoint`` (model, optimizer, scheduler, grad scaler, iteration,
    RNG states and data position) -- the run then equals an uninterrupted one. ``build_model_fn``
    replaces :func:`assigndet.detectors.build_model` (tests, custom models).

    Returns a :class:`TrainResult` (see ``exit_code`` for signals). Raises
    :class:`FloatingPointError` naming the iteration when a loss becomes non-finite (nothing is
    saved then), :class:`~assigndet.config.ConfigError` / ``DatasetError`` for bad settings.
    """
    from .data import build_train_loader

    out = Path(output_dir)
    device = resolve_device(cfg.device)
    init_distributed(device)
    rank, world = get_rank(), get_world_size()
    per_rank = validate_solver(cfg.solver, world)
    check_amp(cfg.solver.amp, device)
    set_deterministic(cfg.deterministic)
    main = rank == 0

    ckpt_path = ck.last_checkpoint(out) if resume else None
    if resume and ckpt_path is None:
        if main:
            print(f"assigndet: no checkpoint in {out}; starting from scratch", file=sys.stderr)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        ck.atomic_write_text(out / CONFIG_FILE, config_to_yaml(cfg))

    dataset = build_dataset(cfg, train=True)
    _check_classes(cfg, dataset)
    val_dataset = None

    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = (build_model_fn or default_build_model)(cfg.model).to(device)
    seed_everything(cfg.seed + rank)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = WarmupMultiStepLR(optimizer, cfg.solver)
    scaler = torch.amp.GradScaler("cuda") if cfg.solver.amp == "fp16" else None
    meta = {"class_names": json.dumps(list(dataset.class_names)),
            "category_ids": json.dumps([int(c) for c in dataset.category_ids]), "config": config_to_yaml(cfg)}

    start_iter = 0
    if ckpt_path is not None:
        ck.load_weights(model, ckpt_path)
        state = ck.load_training_state(ck.state_path_for(ckpt_path))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_iter = int(state["iteration"])
        rngs = state.get("rng", [])
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        elif main:
            print(f"assigndet: checkpoint was written by {len(rngs)} processes, now {world}: RNG states not "
                  "restored", file=sys.stderr)
        if main:
            print(f"assigndet: resuming from {ckpt_path.name} at iteration {start_iter}", file=sys.stderr)

    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    max_iter = cfg.solver.max_iter
    result = TrainResult(iteration=start_iter, output_dir=out)
    if start_iter >= max_iter:
        if main:
            print(f"assigndet: training already complete ({start_iter}/{max_iter} iterations)", file=sys.stderr)
        if evaluate_at_end and not (out / EVAL_FILE).exists():
            result.metrics = evaluate(model, cfg, out, iteration=start_iter)
        result.checkpoint = ckpt_path
        return result

    loader = build_train_loader(dataset, batch_size_per_rank=per_rank, num_workers=cfg.data.num_workers,
                                world_size=world, rank=rank, seed=cfg.seed, hflip_prob=cfg.data.hflip_prob,
                                aspect_grouping=cfg.data.aspect_grouping, start_iter=start_iter)
    log = _MetricsLog(out, start_iter, enabled=main)
    bar = None
    if main and progress:
        from tqdm import tqdm

        bar = tqdm(total=max_iter, initial=start_iter, desc="train", dynamic_ncols=True, mininterval=1.0,
                   file=sys.stderr)
    period = cfg.solver.checkpoint_period
    eval_period = cfg.solver.eval_period
    log_period = max(1, cfg.solver.log_period)
    model.train()
    data_iter = iter(loader)
    it = start_iter
    try:
        with _StopFlag() as stop:
            for it in range(start_iter, max_iter):
                t0 = time.perf_counter()
                images, targets = next(data_iter)
                images, targets = _to_device(images, targets, device)
                t_data = time.perf_counter() - t0

                with autocast(cfg.solver.amp, device):
                    loss_dict = ddp_model(images, targets)
                total = sum(loss_dict.values())
                losses, total_val, stop_now = _reduce_losses(loss_dict, total, stop.signum is not None)
                if not (math.isfinite(total_val) and all(math.isfinite(v) for v in losses.values())):
                    shown = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
                    raise FloatingPointError(f"non-finite loss at iteration {it}: {shown}; no checkpoint was "
                                             "written for this iteration (the last one saved is still valid)")

                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(total).backward()
                    if cfg.solver.clip_grad_norm > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.solver.clip_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    total.backward()
                    if cfg.solver.clip_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.solver.clip_grad_norm)
                    optimizer.step()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                done = it + 1
                result.iteration = done
                dt = time.perf_counter() - t0

                if main and (it % log_period == 0 or done == max_iter or stop_now):
                    log.log({"iteration": it, **losses, "total": total_val, "lr": lr, "time": dt,
                             "data_time": t_data})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total_val:.4f}", lr=f"{lr:.2e}", refresh=False)

                if stop_now:
                    name = ck.checkpoint_name(done)
                    result.checkpoint = _save(out, name, model,
                                              _training_state(done, optimizer, scheduler, scaler, cfg, world), meta)
                    sig = stop.signum if stop.signum is not None else signal.SIGTERM
                    result.interrupted, result.signal = True, int(sig)
                    if main:
                        if bar is not None:
                            bar.close()
                            bar = None
                        print(f"assigndet: stopped at iteration {done}/{max_iter}; checkpoint {name} saved in "
                              f"{out}; continue with --resume (exit code {result.exit_code})",
                              file=sys.stderr, flush=True)
                    return result
                if done < max_iter and period > 0 and done % period == 0:
                    result.checkpoint = _save(out, ck.checkpoint_name(done), model,
                                              _training_state(done, optimizer, scheduler, scaler, cfg, world), meta)
                if done < max_iter and eval_period > 0 and done % eval_period == 0:
                    if val_dataset is None:
                        val_dataset = build_dataset(cfg, train=False)
                    m = evaluate(model, cfg, out, dataset=val_dataset, iteration=done, verbose=False)
                    log.log_eval(m, done)
                    model.train()

            if bar is not None:
                bar.close()
                bar = None
            result.checkpoint = _save(out, ck.FINAL_NAME, model,
                                      _training_state(max_iter, optimizer, scheduler, scaler, cfg, world), meta)
            if evaluate_at_end:
                if val_dataset is None:
                    val_dataset = build_dataset(cfg, train=False)
                result.metrics = evaluate(model, cfg, out, dataset=val_dataset, iteration=max_iter)
                log.log_eval(result.metrics, max_iter)
    finally:
        if bar is not None:
            bar.close()
        log.close()
    return result


def destroy_distributed() -> None:
    if is_dist():
        torch.distributed.destroy_process_group()


__all__ = [
    "train", "evaluate", "inference", "TrainResult", "build_optimizer", "WarmupMultiStepLR", "lr_factor",
    "scaled_lr", "validate_solver", "autocast", "check_amp", "build_dataset", "default_build_model",
    "destroy_distributed",
]
