"""Statistics of the dense detectors' label assignment during training.

Each training forward of ATSS, PAA and Dynamic ATSS adds, from the assignment it has just made,
a few sums to ``model.assignment_totals`` (one detached tensor on the model's device: no extra
assignment, no host synchronisation). :func:`assignment_stats` turns the sums accumulated since
its previous call into the logged figures and starts a new period:

* ``assign/pos_per_gt``          positives per ground-truth box (mean over the period's GTs)
* ``assign/level_share/P3`` ...  share of the positives on each FPN level (sums to 1)
* ``assign/mean_iou``            mean IoU of a positive anchor with its GT (the model's offset convention)
* ``assign/no_pos_share``        share of the GTs that got no positive anchor

Figures that are undefined in a period (no GT, no positive) are left out.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..boxes import elementwise_iou
from ..utils import is_dist

__all__ = ["TOTALS_ATTR", "assignment_counts", "record_assignment", "assignment_stats"]

#: the attribute of the model holding the sums since the last :func:`assignment_stats`
TOTALS_ATTR = "assignment_totals"
#: slots of the sums vector before the per-level positive counts
_GTS, _POS, _IOU, _NO_POS, _LEVELS = 0, 1, 2, 3, 4


@torch.no_grad()
def assignment_counts(matched: Tensor, anchors: Tensor, gt_boxes: Tensor, num_gts: list[int],
                      num_per_level: list[int], *, offset: float = 1.0) -> Tensor:
    """The sums of one batch -> (4 + L,) float32: [#GTs, #positives, sum of the positives' IoU
    with their GT, #GTs without a positive, #positives on each of the L levels].

    matched (B, A) per-image GT index (-1 background, < -1 ignore); anchors (A, 4), levels
    concatenated in the order of ``num_per_level``; gt_boxes (B, A, 4) the matched GT box of each
    anchor (:func:`~.common.gather_targets`); num_gts: the B images' GT counts.
    """
    B, A = matched.shape
    dev = matched.device
    pos = matched >= 0  # (B, A)
    starts = torch.tensor([0] + list(num_gts[:-1]), device=dev).cumsum(0)  # (B,)
    total = sum(num_gts)
    gt_global = torch.where(pos, matched + starts[:, None], total)  # (B, A), background -> dummy slot
    per_gt = torch.zeros(total + 1, device=dev).scatter_add_(0, gt_global.reshape(-1), pos.reshape(-1).float())
    levels = torch.repeat_interleave(torch.arange(len(num_per_level), device=dev),
                                     torch.tensor(num_per_level, device=dev), output_size=A)  # (A,)
    per_level = torch.zeros(len(num_per_level), device=dev).scatter_add_(0, levels, pos.sum(0).float())  # (L,)
    iou = elementwise_iou(anchors.expand(B, A, 4).reshape(-1, 4), gt_boxes.reshape(-1, 4), offset=offset)  # (B*A,)
    iou_sum = torch.where(pos.reshape(-1), iou.float(), 0.0).sum()
    head = torch.stack([torch.tensor(float(total), device=dev), pos.sum().float(), iou_sum,
                        (per_gt[:total] == 0).sum().float()])  # (4,)
    return torch.cat([head, per_level])


def record_assignment(model: nn.Module, matched: Tensor, anchors: Tensor, gt_boxes: Tensor, targets: list[dict],
                      num_per_level: list[int]) -> None:
    """Add the sums of this batch's assignment (:func:`assignment_counts`) to
    ``model.assignment_totals`` (detached, on the device)."""
    counts = assignment_counts(matched, anchors, gt_boxes, [len(t["boxes"]) for t in targets], num_per_level,
                               offset=float(getattr(model, "offset", 1.0)))
    prev = getattr(model, TOTALS_ATTR, None)
    if prev is not None and prev.shape == counts.shape:
        counts = prev.to(counts.device) + counts
    setattr(model, TOTALS_ATTR, counts)


def _level_names(model: nn.Module, num_levels: int) -> list[str]:
    strides = getattr(getattr(model, "cfg", None), "anchor_strides", None)
    if strides is not None and len(strides) == num_levels:
        return [f"P{round(math.log2(s))}" for s in strides]
    return [f"L{i}" for i in range(num_levels)]


def assignment_stats(model: nn.Module, *, reset: bool = True) -> dict[str, float]:
    """The assignment figures since the previous call (see the module docstring), then (``reset``)
    a new period; ``{}`` for a model that records none (Faster R-CNN) or before any training step.

    ``model`` may be wrapped (``DistributedDataParallel``: its ``.module``). Under a process group
    the sums are all-reduced first, so every process must call it at the same iterations.
    """
    model = getattr(model, "module", model)
    totals = getattr(model, TOTALS_ATTR, None)
    if totals is None:
        return {}
    totals = totals.clone()
    if is_dist():
        torch.distributed.all_reduce(totals)
    if reset:
        setattr(model, TOTALS_ATTR, torch.zeros_like(totals))
    t = totals.cpu().tolist()  # one host synchronisation per logged iteration
    out: dict[str, float] = {}
    if t[_GTS] > 0:
        out["assign/pos_per_gt"] = t[_POS] / t[_GTS]
        out["assign/no_pos_share"] = t[_NO_POS] / t[_GTS]
    if t[_POS] > 0:
        out["assign/mean_iou"] = t[_IOU] / t[_POS]
        for name, n in zip(_level_names(model, len(t) - _LEVELS), t[_LEVELS:]):
            out[f"assign/level_share/{name}"] = n / t[_POS]
    return out
