"""The classic IoU matcher (maskrcnn-benchmark's ``Matcher``): RPN, PAA step A, R-CNN sampling.

Shape letters: G ground truths, A anchors (or proposals).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "max_iou_match"]

#: Match value of an anchor whose best IoU is below ``low`` (background).
BELOW_LOW_THRESHOLD = -1
#: Match value of an anchor whose best IoU is in ``[low, high)`` (ignore).
BETWEEN_THRESHOLDS = -2


@torch.no_grad()
def max_iou_match(
    iou: Tensor,
    high: float,
    low: float,
    allow_low_quality: bool = False,
) -> Tensor:
    """Match every anchor to its best GT by IoU.

    Steps (maskrcnn-benchmark semantics):

    1. For each anchor, the best GT = argmax over GTs of IoU (exact ties → lowest GT index).
    2. Best IoU < ``low`` → ``-1``; ``low`` ≤ best IoU < ``high`` → ``-2`` (only when high > low).
    3. ``allow_low_quality``: for each GT, every anchor whose IoU with it equals that GT's maximum
       IoU over anchors (ties included) gets back **its own** argmax GT from step 1 — not
       necessarily this GT. (A GT whose best IoU is 0 thereby rescues every anchor that has IoU 0
       with it, as in the reference.)

    Args:
        iou: (G, A) IoU matrix — GTs along dim 0, anchors along dim 1.
        high, low: thresholds, ``low <= high``.
        allow_low_quality: enable step 3.

    Returns:
        (A,) int64: the GT index of each anchor, ``-1`` background, ``-2`` ignore.
    """
    G, A = iou.shape
    if G == 0:
        return torch.full((A,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
    best_iou, best_gt = iou.max(dim=0)  # (A,), (A,)
    matches = torch.where(best_iou < low, BELOW_LOW_THRESHOLD, best_gt)  # (A,)
    if high > low:
        between = (best_iou >= low) & (best_iou < high)  # (A,)
        matches = torch.where(between, BETWEEN_THRESHOLDS, matches)
    if allow_low_quality and A > 0:
        gt_best = iou.max(dim=1).values  # (G,)
        rescued = (iou == gt_best[:, None]).any(dim=0)  # (A,)
        matches = torch.where(rescued, best_gt, matches)
    return matches
