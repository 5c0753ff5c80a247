"""The classic IoU matcher (maskrcnn-benchmark's ``Matcher``): RPN, PAA step A, R-CNN sampling.

Shape letters: G ground truths, A anchors (or proposals).
"""
from __future__ import annotations

import torch
from torch import Tensor

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
    """mmdetection's ``MaxIoUAssigner`` (SPEC §6, PAA step A of its port), vectorised.

    1. Best GT of each anchor (first index on ties); best IoU in [0, ``neg_iou_thr``) -> ``-1``;
       >= ``pos_iou_thr`` -> that GT; otherwise ``-2`` (ignore).
    2. ``match_low_quality``: GTs are visited in index order and every GT whose best IoU is
       >= ``min_pos_iou`` takes the anchors attaining it (all of them with ``gt_max_assign_all``,
       else the first), **overwriting** earlier assignments — so an anchor goes to the *last* GT it
       is a best anchor of, which need not be its own argmax GT (unlike :func:`max_iou_match`).
       With ``min_pos_iou=0`` a GT whose best IoU is 0 takes every anchor with IoU 0 to it.

    Args:
        iou: (G, A) IoU matrix.
    Returns:
        (A,) int64 GT index, ``-1`` background, ``-2`` ignore.
    """
    G, A = iou.shape
    if G == 0:
        return torch.full((A,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
    best_iou, best_gt = iou.max(dim=0)  # (A,), (A,)
    matches = torch.full((A,), BETWEEN_THRESHOLDS, dtype=torch.int64, device=iou.device)
    matches = torch.where((best_iou >= 0) & (best_iou < neg_iou_thr), BELOW_LOW_THRESHOLD, matches)
    matches = torch.where(best_iou >= pos_iou_thr, best_gt, matches)
    if match_low_quality and A > 0:
        gt_best, gt_first = iou.max(dim=1)  # (G,)
        eligible = gt_best >= min_pos_iou  # (G,)
        if gt_max_assign_all:
            takes = (iou == gt_best[:, None]) & eligible[:, None]  # (G, A)
        else:
            takes = torch.zeros_like(iou, dtype=torch.bool)
            takes[torch.arange(G, device=iou.device), gt_first] = eligible
        last = (G - 1) - takes.flip(0).to(torch.uint8).argmax(dim=0)  # (A,) the last GT taking the anchor
        matches = torch.where(takes.any(dim=0), last, matches)
    return matches
