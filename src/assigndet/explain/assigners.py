"""The head outputs of one image and the three assigners applied to them, with their own
intermediates (``details=True``), turned into plain per-GT records (what the JSON holds and the
figures draw). Nothing here recomputes an assignment: every number is read from the assigners'
results (:class:`~assigndet.assign.atss.ATSSDetails`, :class:`~assigndet.assign.paa.PAAAssignment`,
:class:`~assigndet.assign.dynamic_atss.DynamicATSSDetails`).

Conventions are the model's: its anchors, its pixel offset, its box coder, its ``topk`` and, for
PAA, its ``paa_iou_threshold`` and ``paa_variant`` (PAA's defaults for an ATSS or Dynamic ATSS
preset); ATSS's top-k multiplier follows the model's anchor style as in training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..assign import atss_assign, dynamic_atss_assign, paa_assign
from ..config import PAAModelConfig
from ..detectors.common import atss_anchors_per_location
from ..nn.transform import pil_resize_uint8

#: the methods compared, in the order of the figures' columns
METHODS = ("atss", "paa", "dynamic_atss")
METHOD_TITLES = {"atss": "ATSS", "paa": "PAA", "dynamic_atss": "Dynamic ATSS"}


@dataclass
class HeadOutputs:
    """One image as the model sees it and its dense head's outputs."""

    image: Tensor  # (3, h, w) uint8: the input image resized by the model's transform (unpadded)
    boxes: Tensor  # (G, 4) GT boxes in the resized image's pixels
    labels: Tensor  # (G,) int64
    logits: Tensor  # (A, C)
    deltas: Tensor  # (A, 4)
    anchors: Tensor  # (A, 4)
    num_per_level: list[int]
    level_names: list[str]


@torch.no_grad()
def head_outputs(model, image: Tensor, boxes: Tensor, labels: Tensor) -> HeadOutputs:
    """The model's transform (eval mode: its test size), backbone + FPN, head and anchors."""
    model.eval()
    dev = next(model.parameters()).device
    target = {"boxes": boxes.to(dev, torch.float32), "labels": labels.to(dev)}
    batch, sizes, targets = model.transform([image.to(dev)], [target])
    feats = model.features(batch)
    logits, deltas, _ = model.head(feats)  # (1, A, C), (1, A, 4), (1, A)
    anchors, num_per_level = model.anchors(feats)
    names = [f"P{round(math.log2(s))}" for s in model.cfg.anchor_strides]
    return HeadOutputs(pil_resize_uint8(image.cpu(), tuple(sizes[0])), targets[0]["boxes"], targets[0]["labels"],
                       logits[0], deltas[0], anchors, list(num_per_level), names)


def _paa_setting(cfg, name: str):
    return getattr(cfg, name, getattr(PAAModelConfig, name))


def run_assigners(model, h: HeadOutputs) -> dict[str, Any]:
    """The three assigners' details on the same head outputs -> {method: details}."""
    cfg = model.cfg
    a_loc = atss_anchors_per_location(cfg, model.anchor_generator.num_anchors_per_location)
    atss = atss_assign(h.anchors, h.num_per_level, h.boxes, topk=cfg.topk, offset=model.offset,
                       num_anchors_per_location=a_loc, details=True)
    paa = paa_assign(h.anchors, h.num_per_level, h.boxes, h.labels, h.logits, h.deltas, topk=cfg.topk,
                     iou_threshold=_paa_setting(cfg, "paa_iou_threshold"), offset=model.offset,
                     variant=_paa_setting(cfg, "paa_variant"), details=True)
    pred = model.coder.decode(h.deltas, h.anchors)  # (A, 4) the decoded predictions
    dyn = dynamic_atss_assign(h.anchors, h.num_per_level, h.boxes, pred, topk=cfg.topk, offset=model.offset,
                              num_anchors_per_location=a_loc, details=True)
    return {"atss": atss, "paa": paa, "dynamic_atss": dyn}


def settings(model) -> dict[str, Any]:
    """The assigners' settings used (reported in the JSON and the page)."""
    cfg = model.cfg
    return {"topk": cfg.topk, "offset": model.offset, "anchor_style": str(cfg.anchor_style),
            "atss_topk_multiplier": atss_anchors_per_location(cfg, model.anchor_generator.num_anchors_per_location),
            "paa_iou_threshold": _paa_setting(cfg, "paa_iou_threshold"),
            "paa_variant": str(_paa_setting(cfg, "paa_variant"))}


# ------------------------------------------------------------------------------ per-GT records
def _num(x) -> float | None:
    """A float for JSON (None for NaN / inf)."""
    v = float(x)
    return v if math.isfinite(v) else None


def _positives(matched: Tensor, g: int, h: HeadOutputs, levels: Tensor) -> dict[str, Any]:
    idx = (matched == g).nonzero().squeeze(1)  # (P,)
    per_level = torch.bincount(levels[idx], minlength=len(h.level_names)).tolist()
    return {"positives": int(idx.numel()), "per_level": dict(zip(h.level_names, per_level)),
            "positive_anchors": idx.tolist(), "positive_boxes": [[round(float(v), 2) for v in b] for b in h.anchors[idx]]}


def _selection(d, g: int) -> dict[str, list[bool]]:
    """Per candidate of GT g: above the threshold, centre inside the GT, both (ATSS's tail)."""
    return {"candidate_above_threshold": d.above_threshold[:, g].tolist(),
            "candidate_centre_inside": d.inside[:, g].tolist(), "candidate_positive": d.is_positive[:, g].tolist()}


def _atss_record(d, g: int, h: HeadOutputs, levels: Tensor) -> dict[str, Any]:
    rec = _positives(d.matched, g, h, levels)
    rec.update({
        "candidates": d.candidate_idxs[:, g].tolist(), "candidate_levels": d.candidate_levels.tolist(),
        "candidate_iou": [float(v) for v in d.metrics[0][:, g]], **_selection(d, g),
        "iou_mean": _num(d.means[0, g]), "iou_std": _num(d.stds[0, g]), "threshold": _num(d.threshold[g])})
    return rec


def _dynamic_record(d, g: int, h: HeadOutputs, levels: Tensor) -> dict[str, Any]:
    a = d.atss
    rec = _positives(d.matched, g, h, levels)
    rec.update({
        "candidates": a.candidate_idxs[:, g].tolist(), "candidate_levels": a.candidate_levels.tolist(),
        "candidate_combined_iou": [float(v) for v in a.quality[:, g]],
        "candidate_pred_iou": [float(v) for v in a.metrics[0][:, g]],
        "candidate_anchor_iou": [float(v) for v in a.metrics[1][:, g]],
        **_selection(a, g),
        "pred_iou_mean": _num(a.means[0, g]), "anchor_iou_mean": _num(a.means[1, g]),
        "pred_iou_std": _num(a.stds[0, g]), "anchor_iou_std": _num(a.stds[1, g]), "threshold": _num(a.threshold[g])})
    return rec


def _paa_record(d, g: int, h: HeadOutputs, levels: Tensor) -> dict[str, Any]:
    p = d.partition
    n = int(p.num_candidates[g])
    cut = int(p.cut[g])
    cand = p.candidate_idxs[g, :n]
    rec = _positives(d.matched, g, h, levels)
    rec.update({
        "first_stage_matches": int((d.first_stage_matched == g).sum()),
        "num_candidates": n, "candidates": cand.tolist(), "candidate_levels": levels[cand].tolist(),
        "candidate_scores": [float(v) for v in p.candidate_scores[g, :n]],
        "candidate_component": p.fit.components[g, :n].tolist(), "candidate_positive": p.is_positive[g, :n].tolist(),
        "gmm_fitted": bool(n >= 2), "gmm_means": [_num(v) for v in p.fit.means[g]],
        "gmm_variances": [_num(v) for v in p.fit.variances[g]], "gmm_weights": [_num(v) for v in p.fit.weights[g]],
        "gmm_n_iter": int(p.fit.n_iter[g]), "gmm_converged": bool(p.fit.converged[g]),
        "cut_index": cut, "cut_score": _num(p.candidate_scores[g, cut]) if 0 <= cut < n else None})
    return rec


_RECORDS = {"atss": _atss_record, "paa": _paa_record, "dynamic_atss": _dynamic_record}


def gt_records(h: HeadOutputs, details: dict[str, Any]) -> list[dict[str, Any]]:
    """Per GT: its box and label and, per method, the record of its assignment."""
    cpu = {m: _to_cpu(d) for m, d in details.items()}
    hc = HeadOutputs(h.image, h.boxes.cpu(), h.labels.cpu(), h.logits, h.deltas, h.anchors.cpu(), h.num_per_level,
                     h.level_names)
    levels = torch.repeat_interleave(torch.arange(len(h.num_per_level)), torch.tensor(h.num_per_level))  # (A,)
    out = []
    for g in range(len(hc.boxes)):
        rec: dict[str, Any] = {"index": g, "label": int(hc.labels[g]),
                               "box": [round(float(v), 2) for v in hc.boxes[g]]}
        for m in METHODS:
            rec[m] = _RECORDS[m](cpu[m], g, hc, levels)
        out.append(rec)
    return out


def _to_cpu(x):
    """The same (named) tuple structure with every tensor on the CPU."""
    if isinstance(x, Tensor):
        return x.cpu()
    if isinstance(x, tuple):
        items = [_to_cpu(v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    return x
