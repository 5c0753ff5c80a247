"""Dynamic ATSS (arXiv 2201.09396, ZTX-100/DLA-Combined-IoUs): ATSS on predicted + anchor IoUs, SPEC §4.1."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..boxes import box_centers, box_iou
from .atss import (ATSSDetails, BlockMerge, above_and_inside, atss_candidates, atss_select_details, candidate_levels,
                   candidate_threshold, empty_details, gt_blocks, resolve_best)

__all__ = ["DynamicATSSDetails", "dynamic_atss_assign"]


class DynamicATSSDetails(NamedTuple):
    """Intermediates of :func:`dynamic_atss_assign` (``details=True``): the IoU target per anchor
    and the ATSS selection on S = P + Q (``atss.metrics`` = (P, Q), ``atss.quality`` = S)."""

    matched: Tensor  # (A,) int64 GT index or -1 (what dynamic_atss_assign returns first)
    iou_target: Tensor  # (A,) what it returns second
    atss: ATSSDetails


@torch.no_grad()
def dynamic_atss_assign(
    anchors: Tensor,
    num_anchors_per_level: list[int],
    gt_boxes: Tensor,
    pred_boxes: Tensor,
    *,
    topk: int = 9,
    offset: float = 1.0,
    num_anchors_per_location: int = 1,
    details: bool = False,
) -> tuple[Tensor, Tensor] | DynamicATSSDetails:
    """GT index per anchor (or -1) and the IoU target per anchor -> ((A,) int64, (A,) float);
    with ``details=True`` a :class:`DynamicATSSDetails` instead (both, and the candidates, P, Q,
    their means and stds, the threshold, the positives).

    anchors (A, 4); gt_boxes (G, 4); pred_boxes (A, 4) the decoded (detached) predictions.
    The IoU target is IoU(prediction, assigned GT) with the offset convention; background
    anchors get the IoU with GT 0 as the reference does (unused by the losses).

    1. P = IoU(prediction, GT), Q = IoU(anchor, GT), S = P + Q.
    2. Candidates as ATSS: per level the topk * A anchors with the nearest *anchor* centres.
    3. Per GT, threshold = mean(P) + mean(Q) + std(P) + std(Q) over its candidates (unbiased).
    4. Positive iff S >= threshold and the anchor centre is inside the GT by more than 0.01.
    5. Several GTs: the highest S wins.
    """
    num_anchors, num_gts = anchors.shape[0], gt_boxes.shape[0]
    if num_gts == 0 or num_anchors == 0:
        matched = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
        target = torch.zeros(num_anchors, dtype=pred_boxes.dtype, device=anchors.device)
        if details:
            return DynamicATSSDetails(matched, target, empty_details(matched, num_gts, 2, anchors.dtype))
        return matched, target
    anchor_ctr = box_centers(anchors)  # (A, 2)
    k = topk * num_anchors_per_location
    if details:
        p = box_iou(pred_boxes, gt_boxes, offset=offset)  # 1. (A, G)
        q = box_iou(anchors, gt_boxes, offset=offset)  # (A, G)
        cand = atss_candidates(anchor_ctr, box_centers(gt_boxes), num_anchors_per_level, k)  # 2. (K, G)
        levels = candidate_levels(num_anchors_per_level, k, anchors.device)  # (K,)
        d = atss_select_details(p + q, cand, (p.gather(0, cand), q.gather(0, cand)), anchor_ctr, gt_boxes, levels)
        return DynamicATSSDetails(d.matched, _iou_target(p, d.matched), d)
    merge = None
    for block in gt_blocks(num_anchors, num_gts):  # one block unless there are thousands of GTs
        gts = gt_boxes[block]
        p = box_iou(pred_boxes, gts, offset=offset)  # 1. (A, G_b)
        q = box_iou(anchors, gts, offset=offset)  # (A, G_b)
        cand = atss_candidates(anchor_ctr, box_centers(gts), num_anchors_per_level, k)  # 2. (K, G_b)
        thresh = candidate_threshold(p.gather(0, cand), q.gather(0, cand))  # 3. (G_b,)
        s = p + q  # (A, G_b)
        above, inside = above_and_inside(s, cand, thresh, anchor_ctr, gts)  # 4. (K, G_b)
        best, best_gt = resolve_best(s, cand, above & inside)  # 5.
        if merge is None:  # background anchors' IoU target: with GT 0, as the reference
            merge = BlockMerge(num_anchors, anchors.device, s.dtype, extra=p[:, 0])
        merge.add(block, best, best_gt, extra=p.gather(1, best_gt[:, None]).squeeze(1))
    return merge.matched, merge.extra


def _iou_target(p: Tensor, matched: Tensor) -> Tensor:
    """IoU(prediction, assigned GT) per anchor, with GT 0 for the background -> (A,)."""
    return p.gather(1, matched.clamp(min=0)[:, None]).squeeze(1)  # (A,)
