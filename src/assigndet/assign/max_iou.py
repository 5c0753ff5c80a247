"""The one IoU matcher: RPN, PAA step A, R-CNN sampling; maskrcnn-benchmark's / detectron2's
``Matcher`` and mmdetection's ``MaxIoUAssigner`` differ only in their low-quality rule.

Shape letters: G ground truths, A anchors (or proposals).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..variants import LowQuality

__all__ = ["BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "max_iou_match", "max_iou_match_mmdet"]

#: Match value of an anchor whose best IoU is below ``low`` (background).
BELOW_LOW_THRESHOLD = -1
#: Match value of an anchor whose best IoU is in ``[low, high)`` (ignore).
BETWEEN_THRESHOLDS = -2


@torch.no_grad()
def max_iou_match(
    iou: Tensor,
    high: float,
    low: float,
    low_quality: LowQuality | str | bool | None = None,
    *,
    min_pos_iou: float = 0.0,
    gt_max_assign_all: bool = True,
    allow_low_quality: bool = False,
) -> Tensor:
    """Match every anchor to its best GT by IoU.

    1. For each anchor, the best GT = argmax over GTs of IoU (exact ties → lowest GT index).
    2. Best IoU >= ``high`` → that GT; < ``low`` → ``-1``; in ``[low, high)`` → ``-2`` (ignore).
    3. Low-quality matches (``low_quality``; none when ``None``), for every GT g the anchors whose
       IoU with g equals g's best IoU over anchors (ties included; with ``gt_max_assign_all=False``
       only the first of them):

       * ``LowQuality.detectron2`` (maskrcnn-benchmark's and detectron2's ``Matcher``,
         torchvision): they get back **their own** argmax GT from step 1 — not necessarily g —
         whatever the IoU (a GT whose best IoU is 0 thereby rescues every anchor with IoU 0 to it).
       * ``LowQuality.mmdet`` (mmdetection's ``MaxIoUAssigner``): when g's best IoU is
         >= ``min_pos_iou`` they go **to g**, GTs visited in index order, a later GT overwriting
         an earlier one (so an anchor goes to the *last* GT it is a best anchor of).

    IoUs are in [0, 1] (no NaN), where both references' step 2 agree.

    Args:
        iou: (G, A) IoU matrix — GTs along dim 0, anchors along dim 1.
        high, low: thresholds, ``low <= high``.
        low_quality: the rule of step 3, a :class:`~assigndet.variants.LowQuality` or its spelling
            (the previous boolean: ``True`` = ``detectron2``, ``False`` = none).
        min_pos_iou: the mmdet rule's floor on a GT's best IoU.
        gt_max_assign_all: every anchor attaining a GT's best IoU (else the first).
        allow_low_quality: deprecated spelling of ``low_quality=LowQuality.detectron2``.
    Returns:
        (A,) int64: the GT index of each anchor, ``-1`` background, ``-2`` ignore.
    """
    if isinstance(low_quality, bool) or low_quality is None:  # the previous allow_low_quality flag
        low_quality = LowQuality.detectron2 if (low_quality or allow_low_quality) else None
    rule = None if low_quality is None else LowQuality(low_quality)
    G, A = iou.shape
    if G == 0:
        return torch.full((A,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
    best_iou, best_gt = iou.max(dim=0)  # (A,), (A,)
    matches = torch.where(best_iou < low, BELOW_LOW_THRESHOLD, best_gt)  # (A,)
    if high > low:
        between = (best_iou >= low) & (best_iou < high)  # (A,)
        matches = torch.where(between, BETWEEN_THRESHOLDS, matches)
    if rule is None or A == 0:
        return matches
    takes = _gt_best_anchors(iou, gt_max_assign_all)  # (G, A)
    if rule is LowQuality.detectron2:
        return torch.where(takes.any(dim=0), best_gt, matches)
    gt_best = iou.max(dim=1).values  # (G,)
    takes &= (gt_best >= min_pos_iou)[:, None]  # (G, A)
    last = (G - 1) - takes.flip(0).to(torch.uint8).argmax(dim=0)  # (A,) the last GT taking the anchor
    return torch.where(takes.any(dim=0), last, matches)


def _gt_best_anchors(iou: Tensor, assign_all: bool) -> Tensor:
    """(G, A) bool: the anchors attaining each GT's best IoU (all of them, or the first)."""
    gt_best, gt_first = iou.max(dim=1)  # (G,)
    if assign_all:
        return iou == gt_best[:, None]
    takes = torch.zeros_like(iou, dtype=torch.bool)
    takes[torch.arange(iou.shape[0], device=iou.device), gt_first] = True
    return takes


@torch.no_grad()
def max_iou_match_mmdet(
    iou: Tensor,
    pos_iou_thr: float,
    neg_iou_thr: float,
    *,
    min_pos_iou: float = 0.0,
    match_low_quality: bool = True,
    gt_max_assign_all: bool = True,
) -> Tensor:
    """mmdetection's ``MaxIoUAssigner`` (SPEC §6, PAA step A of its port): :func:`max_iou_match`
    with ``low_quality=LowQuality.mmdet`` (kept as an alias for one release)."""
    return max_iou_match(iou, pos_iou_thr, neg_iou_thr, LowQuality.mmdet if match_low_quality else None,
                         min_pos_iou=min_pos_iou, gt_max_assign_all=gt_max_assign_all)
