"""Inference and COCO box evaluation (faster-coco-eval, a pycocotools-compatible C++ implementation).

:func:`inference` runs a model over images; :func:`evaluate` runs it, distributed, over a
config's validation split and scores the gathered detections. ``predictions_to_coco`` turns model outputs (xyxy boxes in original-image pixels, 0-based
contiguous labels) into COCO result records; ``evaluate_coco`` runs COCOeval and returns a flat
dict of metrics as fractions in [0, 1] (``-1`` where COCO has nothing to measure, e.g. APs when
the ground truth has no small object), with the per-class AP table under ``"per_class"``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from torch import nn

from .checkpoints import unwrap_model
from .config import Config
from .data import CocoDetection, build_dataset, build_test_loader
from .solver import autocast
from .utils import (all_gather_object, atomic_write_text, broadcast_object, get_rank, get_rng_state, get_world_size,
                    is_dist, is_main_process, set_rng_state, to_device)
from .variants import AMP

EVAL_FILE = "eval.json"
EVAL_HISTORY_FILE = "eval_history.jsonl"
DETECTIONS_FILE = "detections.json"

#: the 12 numbers COCOeval.summarize() prints, in its order (pycocotools ``stats``)
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR", "ARs", "ARm", "ARl")
#: extra AP at single IoU thresholds read from the precision array (IoU-Net tables report them)
EXTRA_IOUS = {"AP60": 0.6, "AP70": 0.7, "AP80": 0.8, "AP90": 0.9}


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


def evaluate_coco(gt: Any, results: list[dict[str, Any]], *, image_ids: Optional[Iterable[int]] = None,
                  verbose: bool = False) -> dict[str, Any]:
    """COCO bbox metrics of ``results`` against ``gt`` (annotation file path, dict or COCO).

    ``image_ids`` restricts the evaluation to these images (default: all images of ``gt``).
    Returns ``{AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR, ARs, ARm, ARl, AP60, AP70, AP80,
    AP90, per_class: {class name: AP}, num_images, num_detections}``; ``AR`` is AR@100.
    With ``verbose`` the usual COCO summary is printed.
    """
    coco_gt = _load_gt(gt)
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

    stats = np.asarray(ev.stats, dtype=np.float64)[: len(STAT_KEYS)]
    metrics: dict[str, Any] = {k: float(v) for k, v in zip(STAT_KEYS, stats)}

    precision = np.asarray(ev.eval["precision"])  # (T IoUs, R recalls, K classes, A areas, M maxDets)
    iou_thrs = np.asarray(ev.params.iouThrs)
    area_all = list(ev.params.areaRngLbl).index("all")
    m100 = len(ev.params.maxDets) - 1  # maxDets sorted; the last one is 100
    for key, thr in EXTRA_IOUS.items():
        t = int(np.argmin(np.abs(iou_thrs - thr)))
        p = precision[t, :, :, area_all, m100]
        metrics[key] = float(p[p > -1].mean()) if (p > -1).any() else -1.0

    per_class: dict[str, float] = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, area_all, m100]
        name = str(coco_gt.cats.get(cat_id, {}).get("name", cat_id))
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    metrics["per_class"] = per_class
    metrics["num_images"] = len(ev.params.imgIds)
    metrics["num_detections"] = len(results)
    return metrics


def save_results_json(path: str | os.PathLike, results: list[dict[str, Any]]) -> None:
    atomic_write_text(path, json.dumps(results))


def write_eval_json(path: str | os.PathLike, metrics: Mapping[str, Any], **extra: Any) -> None:
    """``eval.json``: the metrics (fractions 0–1, COCO AP under ``"AP"``) plus ``extra`` fields."""
    obj = dict(metrics)
    obj.update(extra)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A compact human-readable table (percent)."""
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR"]
    head = " | ".join(f"{k:>6}" for k in keys)
    vals = " | ".join(f"{100 * metrics[k]:6.2f}" if metrics.get(k, -1) >= 0 else f"{'-':>6}" for k in keys)
    lines = [head, vals]
    per_class = metrics.get("per_class") or {}
    if per_class:
        width = max(len(n) for n in per_class)
        lines.append("per-class AP:")
        lines += [f"  {n:<{width}}  {100 * v:6.2f}" if v >= 0 else f"  {n:<{width}}  {'-':>6}"
                  for n, v in per_class.items()]
    return "\n".join(lines)


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


def _infer_shard(model: nn.Module, dataset, cfg: Config, device: torch.device) -> dict[int, dict]:
    """This process's detections ``{image_id: prediction}`` on its strided shard of ``dataset``;
    the RNG states and the model's train/eval mode are left as they were."""
    world, rank = get_world_size(), get_rank()
    loader = build_test_loader(dataset, batch_size=max(1, cfg.test.ims_per_batch // world),
                               num_workers=cfg.test.num_workers, world_size=world, rank=rank)
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
    metrics = evaluate_coco(str(dataset.ann_file), results, image_ids=list(preds.keys()))
    if iteration is not None:
        metrics["iteration"] = int(iteration)
    if output_dir is not None:
        out = Path(output_dir)
        save_results_json(out / DETECTIONS_FILE, results)
        write_eval_json(out / EVAL_FILE, metrics)
        with open(out / EVAL_HISTORY_FILE, "a") as f:
            f.write(json.dumps({k: v for k, v in metrics.items() if k != "per_class"}) + "\n")
    if verbose:
        at = f" at iteration {iteration}" if iteration is not None else ""
        print(f"evaluation on {metrics['num_images']} images{at}:\n{format_metrics(metrics)}", flush=True)
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, cfg: Config, output_dir: Optional[str | os.PathLike] = None, *,
             dataset: Optional[CocoDetection] = None, iteration: Optional[int] = None,
             verbose: bool = True) -> dict[str, Any]:
    """COCO evaluation of ``model`` on ``cfg.data``'s validation split (or ``dataset``).

    Each process infers its strided shard of the first ``cfg.test.max_images`` images (all when
    0); rank 0 gathers the detections, writes ``detections.json`` (COCO results) and
    ``eval.json`` (metrics as fractions, COCO AP under ``"AP"``, ``"per_class"``), and appends a
    line to ``eval_history.jsonl``. Every process returns the metrics. The global RNG states
    are left untouched (so evaluating during training does not change the training run).
    """
    model = unwrap_model(model)
    device = next(model.parameters()).device
    base = dataset if dataset is not None else build_dataset(cfg, train=False)
    shown = base
    if 0 < cfg.test.max_images < len(base):
        shown = torch.utils.data.Subset(base, range(cfg.test.max_images))
    local = _infer_shard(model, shown, cfg, device)
    gathered = all_gather_object(local) if is_dist() else [local]
    metrics: Optional[dict[str, Any]] = None
    if is_main_process():
        preds: dict[int, dict[str, torch.Tensor]] = {}
        for part in gathered:
            preds.update(part)
        metrics = _score(preds, base, output_dir, iteration, verbose)
    return broadcast_object(metrics)


__all__ = ["STAT_KEYS", "EXTRA_IOUS", "EVAL_FILE", "EVAL_HISTORY_FILE", "DETECTIONS_FILE", "predictions_to_coco",
           "evaluate_coco", "save_results_json", "write_eval_json", "format_metrics", "inference", "evaluate"]
