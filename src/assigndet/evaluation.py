"""COCO box evaluation with faster-coco-eval (a pycocotools-compatible C++ implementation).

``predictions_to_coco`` turns model outputs (xyxy boxes in original-image pixels, 0-based
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

from .utils import atomic_write_text

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


def _load_gt(gt: Any):
    from faster_coco_eval import COCO

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
    from faster_coco_eval import COCOeval_faster

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
