"""Inference and COCO box evaluation (faster-coco-eval, a pycocotools-compatible C++ implementation).

:func:`inference` runs a model over images; :func:`evaluate` runs it, distributed, over a
config's validation split and scores the gathered detections. ``predictions_to_coco`` turns
model outputs (xyxy boxes in original-image pixels, 0-based contiguous labels) into COCO result
records; ``evaluate_coco`` runs COCOeval and returns a flat dict of metrics as fractions in
[0, 1] (``-1`` where COCO has nothing to measure, e.g. APs when the ground truth has no small
object), with the per-class AP table under ``"per_class"``; ``pr_curves`` keeps the
evaluator's own precision-recall curves (IoU 0.5 and 0.75) for plotting.

One AP convention: files (``eval.json``, ``eval_history.jsonl``, ``pr_curves.json``) hold
fractions in [0, 1]; what is printed is in percent, through :func:`format_ap` and :func:`format_metrics`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from safetensors import SafetensorError, safe_open
from torch import nn
from tqdm import tqdm

from .checkpoints import unwrap_model
from .config import Config, apply_overrides, config_from_yaml
from .data import CocoDetection, build_dataset, build_test_loader
from .errors import ConfigError
from .presets import load_config
from .solver import autocast
from .utils import (all_gather_object, atomic_write_text, broadcast_object, get_rank, get_rng_state, get_world_size,
                    is_dist, is_main_process, set_rng_state, to_device)
from .variants import AMP

EVAL_FILE = "eval.json"
EVAL_HISTORY_FILE = "eval_history.jsonl"
DETECTIONS_FILE = "detections.json"
PR_CURVES_FILE = "pr_curves.json"

#: the resolved config a run directory holds beside its weights
RUN_CONFIG_FILE = "config.yaml"
#: the plots :func:`assigndet.viz.write_run_plots` writes into a run directory (losses + LR, AP, PR, per class)
RUN_PLOT_FILES = ("loss_curve.png", "ap_history.png", "pr_curves.png", "per_class_ap.png")

#: the 12 numbers COCOeval.summarize() prints, in its order (pycocotools ``stats``)
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR", "ARs", "ARm", "ARl")
#: extra AP at single IoU thresholds read from the precision array (IoU-Net tables report them)
EXTRA_IOUS = {"AP60": 0.6, "AP70": 0.7, "AP80": 0.8, "AP90": 0.9}
#: the IoU thresholds of the precision-recall curves saved in ``pr_curves.json``
PR_IOUS = (0.5, 0.75)


def predictions_to_coco(predictions: Mapping[int, Mapping[str, torch.Tensor]], category_ids: Sequence[int], *,
                        offset: float = 1.0) -> list[dict[str, Any]]:
    """COCO result records from ``{image_id: dict(boxes (N,4) xyxy, scores (N,), labels (N,))}``.

    Labels are 0-based indices into ``category_ids``. Boxes become ``[x, y, w, h]`` with
    ``w = x2 - x1 + offset`` (``offset=1`` is the original repositories' inclusive-pixel export).
    """
    cat = np.asarray(list(category_ids), dtype=np.int64)
    out: list[dict[str, Any]] = []
    for image_id, pred in predictions.items():
        boxes = torch.as_tensor(pred["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)  # (N, 4)
        if boxes.numel() == 0:
            continue
        scores = torch.as_tensor(pred["scores"]).detach().to("cpu", torch.float64).reshape(-1).tolist()
        labels = torch.as_tensor(pred["labels"]).detach().to("cpu", torch.int64).reshape(-1).numpy()
        if labels.size and (labels.min() < 0 or labels.max() >= len(cat)):
            raise ValueError(f"label out of range [0, {len(cat)}) in the predictions of image {image_id}")
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2] + offset], dim=1).tolist()  # (N, 4)
        cats = cat[labels].tolist()
        out.extend({"image_id": int(image_id), "category_id": int(c), "bbox": [float(v) for v in b],
                    "score": float(s)} for b, s, c in zip(xywh, scores, cats))
    return out


def _load_gt(gt: Any) -> COCO:
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        if not Path(gt).is_file():
            raise FileNotFoundError(f"annotation file not found: {gt}")
        return COCO(str(gt))
    if isinstance(gt, dict):
        return COCO(gt)
    raise TypeError(f"cannot build a COCO ground truth from {type(gt).__name__}")


def _run_cocoeval(coco_gt: COCO, results: list[dict[str, Any]], image_ids: Optional[Iterable[int]],
                  verbose: bool) -> COCOeval_faster:
    """COCOeval evaluated, accumulated and summarised (``stats`` and ``eval["precision"]`` set)."""
    lines: list[str] = []
    coco_dt = coco_gt.loadRes(list(results)) if results else coco_gt.loadRes([])
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lines.append)
    if image_ids is not None:
        ev.params.imgIds = sorted({int(i) for i in image_ids})
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print("\n".join(str(line) for line in lines if str(line).lstrip().startswith("Average")))
    return ev


def _precision_all_100(ev: COCOeval_faster) -> np.ndarray:
    """The evaluator's precision array at area "all", maxDets 100: (T IoUs, R recalls, K classes)."""
    precision = np.asarray(ev.eval["precision"])  # (T IoUs, R recalls, K classes, A areas, M maxDets)
    area_all = list(ev.params.areaRngLbl).index("all")
    m100 = len(ev.params.maxDets) - 1  # maxDets sorted; the last one is 100
    return precision[:, :, :, area_all, m100]  # (T, R, K)


def _valid_mean(p: np.ndarray) -> float:
    """COCO's mean over the entries that are not -1 (-1 when there is none)."""
    return float(p[p > -1].mean()) if (p > -1).any() else -1.0


def _class_names(coco_gt: COCO, ev: COCOeval_faster) -> list[str]:
    return [str(coco_gt.cats.get(c, {}).get("name", c)) for c in ev.params.catIds]


def _metrics(ev: COCOeval_faster, coco_gt: COCO, num_detections: int) -> dict[str, Any]:
    stats = np.asarray(ev.stats, dtype=np.float64)[: len(STAT_KEYS)]
    metrics: dict[str, Any] = {k: float(v) for k, v in zip(STAT_KEYS, stats)}
    precision = _precision_all_100(ev)  # (T, R, K)
    iou_thrs = np.asarray(ev.params.iouThrs)
    for key, thr in EXTRA_IOUS.items():
        metrics[key] = _valid_mean(precision[int(np.argmin(np.abs(iou_thrs - thr)))])
    metrics["per_class"] = {name: _valid_mean(precision[:, :, k]) for k, name in enumerate(_class_names(coco_gt, ev))}
    metrics["num_images"] = len(ev.params.imgIds)
    metrics["num_detections"] = num_detections
    return metrics


def _curve(p: np.ndarray) -> Optional[list[float]]:
    """One precision-recall curve as a JSON list; ``None`` for a class without ground truth (-1)."""
    return None if (p <= -1).all() else [round(float(v), 5) for v in p]


def pr_curves(ev: COCOeval_faster, coco_gt: COCO) -> dict[str, Any]:
    """The evaluator's own precision-recall curves at IoU 0.5 and 0.75 (area "all", maxDets 100).

    ``{"recall": [R], "iou": {"0.5": {"mean": [R], "per_class": {name: [R] or None}}, "0.75": ...}}``:
    ``per_class`` are the columns of ``eval["precision"]`` (pycocotools' interpolated precision at
    each of the R recall thresholds), ``None`` for a class without ground truth; ``mean`` is their
    mean over the classes with ground truth, so that the mean of ``mean`` is AP50 (AP75).
    """
    precision = _precision_all_100(ev)  # (T, R, K)
    iou_thrs = np.asarray(ev.params.iouThrs)
    names = _class_names(coco_gt, ev)
    out: dict[str, Any] = {"recall": [round(float(r), 5) for r in ev.params.recThrs], "iou": {}}
    for thr in PR_IOUS:
        p = precision[int(np.argmin(np.abs(iou_thrs - thr)))]  # (R, K)
        valid = (p > -1).all(axis=0)  # (K,) classes with ground truth
        mean = p[:, valid].mean(axis=1) if valid.any() else np.full(p.shape[0], -1.0)  # (R,)
        out["iou"][str(thr)] = {"mean": _curve(mean), "per_class": {n: _curve(p[:, k]) for k, n in enumerate(names)}}
    return out


def evaluate_coco_curves(gt: Any, results: list[dict[str, Any]], *, image_ids: Optional[Iterable[int]] = None,
                         verbose: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, curves)``: :func:`evaluate_coco`'s metrics and :func:`pr_curves` of one COCOeval run."""
    coco_gt = _load_gt(gt)
    ev = _run_cocoeval(coco_gt, results, image_ids, verbose)
    return _metrics(ev, coco_gt, len(results)), pr_curves(ev, coco_gt)


def evaluate_coco(gt: Any, results: list[dict[str, Any]], *, image_ids: Optional[Iterable[int]] = None,
                  verbose: bool = False) -> dict[str, Any]:
    """COCO bbox metrics of ``results`` against ``gt`` (annotation file path, dict or COCO).

    ``image_ids`` restricts the evaluation to these images (default: all images of ``gt``).
    Returns ``{AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR, ARs, ARm, ARl, AP60, AP70, AP80,
    AP90, per_class: {class name: AP}, num_images, num_detections}``, every metric a fraction in
    [0, 1] (-1: nothing to measure); ``AR`` is AR@100. With ``verbose`` the usual COCO summary is printed.
    """
    coco_gt = _load_gt(gt)
    return _metrics(_run_cocoeval(coco_gt, results, image_ids, verbose), coco_gt, len(results))


def save_results_json(path: str | os.PathLike, results: list[dict[str, Any]]) -> None:
    atomic_write_text(path, json.dumps(results))


def write_eval_json(path: str | os.PathLike, metrics: Mapping[str, Any], **extra: Any) -> None:
    """``eval.json``: the metrics (fractions 0–1, COCO AP under ``"AP"``) plus ``extra`` fields."""
    obj = dict(metrics)
    obj.update(extra)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def format_ap(value: float, name: str = "AP") -> str:
    """The one printed form of an AP (or AR) held as a fraction, as in ``eval.json``:
    ``format_ap(0.56923) == "AP 56.92 (%)"``; ``"AP50 - (no ground truth)"`` for COCO's -1."""
    if value is None or value < 0:
        return f"{name} - (no ground truth)"
    return f"{name} {100 * value:.2f} (%)"


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A compact human-readable table, in percent (``eval.json`` holds the same numbers as fractions)."""
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR"]
    head = " | ".join(f"{k:>6}" for k in keys) + "   (%)"
    vals = " | ".join(f"{100 * metrics[k]:6.2f}" if metrics.get(k, -1) >= 0 else f"{'-':>6}" for k in keys)
    lines = [head, vals]
    per_class = metrics.get("per_class") or {}
    if per_class:
        width = max(len(n) for n in per_class)
        lines.append("per-class AP (%):")
        lines += [f"  {n:<{width}}  {100 * v:6.2f}" if v >= 0 else f"  {n:<{width}}  {'-':>6}"
                  for n, v in per_class.items()]
    return "\n".join(lines)


# ================================================================================ the config of weights
def embedded_config(weights: str | os.PathLike) -> Optional[str]:
    """The YAML config stored in the header of a ``.safetensors`` weights file (``train`` and
    ``convert`` store it under ``"config"``); ``None`` for other files or without one. Reads the
    header only."""
    if Path(weights).suffix != ".safetensors" or not Path(weights).is_file():
        return None
    try:
        with safe_open(str(weights), framework="pt") as f:
            return (f.metadata() or {}).get("config")
    except (SafetensorError, OSError, ValueError):
        return None  # unreadable: loading the weights reports it


def weights_config(weights: str | os.PathLike, *, preset: Optional[str] = None,
                   overrides: Sequence[str] = ()) -> Config:
    """The config to run ``weights`` with (``predict``, ``eval``), ``overrides`` applied: the
    ``config.yaml`` beside it (a run directory), else the config embedded in the weights file
    (:func:`embedded_config`), else ``preset``; a :class:`ConfigError` when there is none."""
    beside = Path(weights).parent / RUN_CONFIG_FILE
    if beside.is_file():
        return apply_overrides(config_from_yaml(str(beside)), list(overrides))
    text = embedded_config(weights)
    if text is not None:
        try:
            cfg = config_from_yaml(io.StringIO(text))  # type: ignore[arg-type]  (OmegaConf.load reads streams)
        except ConfigError as e:
            raise ConfigError(f"the config stored in {weights}: {str(e).split(': ', 1)[-1]}") from None
        return apply_overrides(cfg, list(overrides))
    if preset:
        return load_config(preset, list(overrides))
    raise ConfigError(f"no {RUN_CONFIG_FILE} beside {weights} and no config stored in it; pass --preset NAME")


# ================================================================================ model inference
def _to_cpu(pred: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu() for k, v in pred.items()}


@torch.no_grad()
def inference(model: nn.Module, images: Iterable[torch.Tensor], *, batch_size: int = 1,
              device: Optional[torch.device] = None, amp: AMP | str = AMP.off) -> list[dict[str, torch.Tensor]]:
    """Run ``model`` (eval mode) over ``images`` (each ``[3, H, W]`` uint8 or float 0..1);
    returns one ``dict(boxes, scores, labels)`` per image, on the CPU."""
    model = unwrap_model(model)
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
                    preds = model(to_device(batch, None, device)[0])
                out += [_to_cpu(p) for p in preds]
                batch = []
    finally:
        model.train(was_training)
    return out


def _infer_shard(model: nn.Module, dataset, cfg: Config, device: torch.device, progress: bool) -> dict[int, dict]:
    """This process's detections ``{image_id: prediction}`` on its strided shard of ``dataset``;
    the RNG states and the model's train/eval mode are left as they were. ``progress``: a bar
    over the batches on rank 0 (stderr)."""
    world, rank = get_world_size(), get_rank()
    loader = build_test_loader(dataset, batch_size=max(1, cfg.test.ims_per_batch // world),
                               num_workers=cfg.test.num_workers, world_size=world, rank=rank)
    if progress and rank == 0:
        loader = tqdm(loader, desc="eval", total=len(loader), dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    amp = AMP.off if cfg.solver.amp is AMP.fp16 and device.type != "cuda" else cfg.solver.amp
    rng = get_rng_state()  # iterating a DataLoader draws its base seed from the global RNG
    was_training = model.training
    model.eval()
    local: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for images, targets in loader:
            with autocast(amp, device):
                preds = model(to_device(images, None, device)[0])
            for t, p in zip(targets, preds):
                local[int(t["image_id"])] = _to_cpu(p)
    finally:
        model.train(was_training)
        set_rng_state(rng)
    return local


def _score(preds: dict[int, dict], dataset: CocoDetection, output_dir: Optional[str | os.PathLike],
           iteration: Optional[int], verbose: bool) -> dict[str, Any]:
    """COCO metrics of the gathered ``preds``; writes the result files into ``output_dir``."""
    results = predictions_to_coco(preds, dataset.category_ids, offset=dataset.offset)
    metrics, curves = evaluate_coco_curves(str(dataset.ann_file), results, image_ids=list(preds.keys()))
    if iteration is not None:
        metrics["iteration"] = curves["iteration"] = int(iteration)
    if output_dir is not None:
        out = Path(output_dir)
        save_results_json(out / DETECTIONS_FILE, results)
        write_eval_json(out / EVAL_FILE, metrics)
        atomic_write_text(out / PR_CURVES_FILE, json.dumps(curves, separators=(",", ":")) + "\n")
        with open(out / EVAL_HISTORY_FILE, "a") as f:
            f.write(json.dumps({k: v for k, v in metrics.items() if k != "per_class"}) + "\n")
    if verbose:
        at = f" at iteration {iteration}" if iteration is not None else ""
        print(f"evaluation on {metrics['num_images']} images{at}:\n{format_metrics(metrics)}", flush=True)
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, cfg: Config, output_dir: Optional[str | os.PathLike] = None, *,
             dataset: Optional[CocoDetection] = None, iteration: Optional[int] = None,
             verbose: bool = True, progress: bool = False) -> dict[str, Any]:
    """COCO evaluation of ``model`` on ``cfg.data``'s validation split (or ``dataset``); with
    ``progress`` a bar over the images on rank 0.

    Each process infers its strided shard of the first ``cfg.test.max_images`` images (all when
    0); rank 0 gathers the detections, writes ``detections.json`` (COCO results) and
    ``eval.json`` (metrics as fractions, COCO AP under ``"AP"``, ``"per_class"``) and
    ``pr_curves.json`` (:func:`pr_curves`), and appends a line to ``eval_history.jsonl``. Every
    process returns the metrics. The global RNG states are left untouched (so evaluating during
    training does not change the training run).
    """
    model = unwrap_model(model)
    device = next(model.parameters()).device
    base = dataset if dataset is not None else build_dataset(cfg, train=False)
    shown = base
    if 0 < cfg.test.max_images < len(base):
        shown = torch.utils.data.Subset(base, range(cfg.test.max_images))
    local = _infer_shard(model, shown, cfg, device, progress)
    gathered = all_gather_object(local) if is_dist() else [local]
    metrics: Optional[dict[str, Any]] = None
    if is_main_process():
        preds: dict[int, dict[str, torch.Tensor]] = {}
        for part in gathered:
            preds.update(part)
        metrics = _score(preds, base, output_dir, iteration, verbose)
    return broadcast_object(metrics)


__all__ = ["STAT_KEYS", "EXTRA_IOUS", "PR_IOUS", "EVAL_FILE", "EVAL_HISTORY_FILE", "DETECTIONS_FILE", "PR_CURVES_FILE",
           "predictions_to_coco", "evaluate_coco", "evaluate_coco_curves", "pr_curves", "save_results_json",
           "write_eval_json", "format_ap", "format_metrics", "embedded_config", "weights_config", "inference",
           "evaluate"]
