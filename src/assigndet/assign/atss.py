"""Adaptive Training Sample Selection (ATSS, Zhang et al. CVPR 2020), SPEC §2.2.

:func:`atss_candidates` and :func:`atss_select` are the candidate selection and the selection tail
that Dynamic ATSS shares (:mod:`assigndet.assign.dynamic_atss`).

Shape letters: A anchors (all levels), G ground truths, K candidates per GT (sum over levels).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..boxes import box_centers, box_iou

__all__ = ["ATSSDetails", "BlockMerge", "GT_BLOCK_BYTES", "atss_assign", "atss_candidates", "atss_select", "atss_select_details", "candidate_levels",
           "candidate_threshold", "empty_details", "gt_blocks", "pair_inside", "above_and_inside",
           "resolve_best"]

#: Quality of the (anchor, GT) pairs that are not positive, in the final argmax.
_NOT_POSITIVE = -1e8


def atss_candidates(
    anchor_centers: Tensor, gt_centers: Tensor, num_anchors_per_level: list[int], k: int
) -> Tensor:
    """Per level the ``min(k, A_l)`` anchors nearest to each GT centre -> (sum_l k_l, G) indices."""
    dist = torch.cdist(anchor_centers, gt_centers)  # (A, G), Euclidean
    out, start = [], 0
    for n in num_anchors_per_level:
        kk = min(k, n)
        if kk > 0:
            _, idx = dist[start : start + n].topk(kk, dim=0, largest=False)  # (kk, G)
            out.append(idx + start)
        start += n
    return torch.cat(out, dim=0)


def candidate_levels(num_anchors_per_level: list[int], k: int, device=None) -> Tensor:
    """The pyramid level of each row of :func:`atss_candidates`' result -> (K,) int64."""
    counts = [min(k, n) for n in num_anchors_per_level]
    return torch.cat([torch.full((c,), lvl, dtype=torch.int64, device=device) for lvl, c in enumerate(counts)])


def candidate_stats(*candidate_values: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Per GT the mean and the unbiased std of each (K, G) candidate metric -> two lists of (G,)."""
    return [v.mean(dim=0) for v in candidate_values], [v.std(dim=0) for v in candidate_values]


def candidate_threshold(*candidate_values: Tensor) -> Tensor:
    """Per GT, the sum of the means then of the unbiased stds of each (K, G) candidate metric
    -> (G,): mean + std for ATSS; mean(P) + mean(Q) + std(P) + std(Q) for Dynamic ATSS (in
    that order of additions)."""
    return _threshold_of(*candidate_stats(*candidate_values))


def _threshold_of(means: list[Tensor], stds: list[Tensor]) -> Tensor:
    terms = means + stds
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def atss_select(quality: Tensor, cand: Tensor, thresh: Tensor, anchor_centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """The selection tail: a candidate is positive for its GT iff its ``quality`` >= the GT's
    ``thresh`` and its anchor centre lies inside the GT by more than 0.01; an anchor positive for
    several GTs goes to the one of highest quality -> (A,) int64 GT index or -1.

    quality (A, G); cand (K, G) anchor indices; thresh (G,); anchor_centers (A, 2); gt_boxes (G, 4).
    """
    above, inside = above_and_inside(quality, cand, thresh, anchor_centers, gt_boxes)
    return _resolve(quality, cand, above & inside)


def above_and_inside(quality: Tensor, cand: Tensor, thresh: Tensor, anchor_centers: Tensor,
                      gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """(K, G) bool each: the candidate's quality >= the GT's threshold; its centre inside the GT."""
    num_gts = gt_boxes.shape[0]
    above = quality.gather(0, cand) >= thresh[None, :]  # (K, G)
    gt_idx = torch.arange(num_gts, device=quality.device).expand_as(cand)  # (K, G)
    # centre inside its GT: per (candidate, GT) pair
    inside = pair_inside(anchor_centers[cand.reshape(-1)], gt_boxes[gt_idx.reshape(-1)])  # (K*G,)
    return above, inside.view_as(above)


def _resolve(quality: Tensor, cand: Tensor, is_pos: Tensor) -> Tensor:
    """Positive (candidate, GT) pairs -> (A,) GT index or -1; several GTs: the highest quality wins."""
    best, best_gt = resolve_best(quality, cand, is_pos)
    return torch.where(best > _NOT_POSITIVE, best_gt, torch.full_like(best_gt, -1))


def resolve_best(quality: Tensor, cand: Tensor, is_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Per anchor the highest quality among its positive pairs (``_NOT_POSITIVE`` if none) and that
    GT's index (the lowest on ties) -> (A,), (A,) int64."""
    num_gts = quality.shape[1]
    gt_idx = torch.arange(num_gts, device=quality.device).expand_as(cand)  # (K, G)
    # non-positive pairs count as -1e8
    masked = torch.full_like(quality, _NOT_POSITIVE)  # (A, G)
    sel = (cand * num_gts + gt_idx)[is_pos]  # indices into the flattened (A, G) matrix
    masked.view(-1)[sel] = quality.view(-1)[sel]  # (A, G) viewed as (A*G,)
    return masked.max(dim=1)  # (A,), (A,)


#: bytes one (A, G) float32 matrix of a GT block may take: with more GTs than fit, the assigners
#: process the GTs in blocks (every step but the several-GT rule is per GT), so that the memory of
#: an image with thousands of boxes stays bounded; the result is the same
GT_BLOCK_BYTES = 24 * 2 ** 20


def gt_blocks(num_anchors: int, num_gts: int) -> list[slice]:
    """The GT blocks of an assignment: one block unless an (A, G) matrix exceeds ``GT_BLOCK_BYTES``."""
    size = max(1, GT_BLOCK_BYTES // max(1, 4 * num_anchors))
    return [slice(s, min(s + size, num_gts)) for s in range(0, num_gts, size)]


class BlockMerge:
    """The several-GT rule over GT blocks: per anchor the highest quality of all blocks wins (an
    earlier block, i.e. a lower GT index, on ties); ``extra`` carries a per-anchor value of the
    winning pair along (Dynamic ATSS's IoU target)."""

    def __init__(self, num_anchors: int, device, dtype, extra: Tensor | None = None) -> None:
        self.best = torch.full((num_anchors,), _NOT_POSITIVE, dtype=dtype, device=device)  # (A,)
        self.gt = torch.full((num_anchors,), -1, dtype=torch.int64, device=device)  # (A,)
        self.extra = extra

    def add(self, block: slice, best: Tensor, best_gt: Tensor, extra: Tensor | None = None) -> None:
        better = best > self.best  # (A,)
        self.best = torch.where(better, best, self.best)
        self.gt = torch.where(better, best_gt + block.start, self.gt)
        if extra is not None:
            self.extra = torch.where(better, extra, self.extra)

    @property
    def matched(self) -> Tensor:
        return torch.where(self.best > _NOT_POSITIVE, self.gt, torch.full_like(self.gt, -1))  # (A,)


class ATSSDetails(NamedTuple):
    """Intermediates of :func:`atss_assign` / :func:`~assigndet.assign.dynamic_atss_assign` with
    ``details=True``. Candidates are rows, level by level (``candidate_levels``), GTs columns.
    ``metrics`` are the candidate values whose means and stds sum to the threshold: (IoU,) for
    ATSS, (P = predicted IoU, Q = anchor IoU) for Dynamic ATSS; ``quality`` is what is compared
    with the threshold (IoU, or P + Q)."""

    matched: Tensor  # (A,) int64 GT index or -1 (what the assigner returns)
    candidate_idxs: Tensor  # (K, G) int64 anchor indices
    candidate_levels: Tensor  # (K,) int64 pyramid level of each row
    quality: Tensor  # (K, G) the candidates' compared value
    metrics: tuple[Tensor, ...]  # each (K, G)
    means: Tensor  # (M, G) per metric
    stds: Tensor  # (M, G) per metric, unbiased
    threshold: Tensor  # (G,) sum of the means and stds
    above_threshold: Tensor  # (K, G) bool, quality >= threshold
    inside: Tensor  # (K, G) bool, anchor centre inside the GT by more than 0.01
    is_positive: Tensor  # (K, G) bool, both (before the several-GT rule: ``matched`` has the final say)


def empty_details(matched: Tensor, num_gts: int, num_metrics: int, dtype: torch.dtype) -> ATSSDetails:
    """The details of an image without GTs or anchors: no candidates (K = 0), thresholds NaN."""
    dev = matched.device
    idx = torch.zeros(0, num_gts, dtype=torch.int64, device=dev)  # (0, G)
    val = torch.zeros(0, num_gts, dtype=dtype, device=dev)  # (0, G)
    stat = torch.full((num_metrics, num_gts), torch.nan, dtype=dtype, device=dev)  # (M, G)
    return ATSSDetails(matched, idx, idx.new_zeros(0), val, (val,) * num_metrics, stat, stat.clone(),
                       stat[0].clone(), idx.bool(), idx.bool(), idx.bool())


def atss_select_details(quality: Tensor, cand: Tensor, metrics: tuple[Tensor, ...], anchor_centers: Tensor,
                        gt_boxes: Tensor, levels: Tensor) -> ATSSDetails:
    """:func:`candidate_threshold` then :func:`atss_select` on the (K, G) candidate ``metrics``,
    keeping every intermediate; the same operations in the same order (identical results)."""
    means, stds = candidate_stats(*metrics)
    thresh = _threshold_of(means, stds)  # (G,)
    above, inside = above_and_inside(quality, cand, thresh, anchor_centers, gt_boxes)  # (K, G)
    is_pos = above & inside
    matched = _resolve(quality, cand, is_pos)  # (A,)
    return ATSSDetails(matched, cand, levels, quality.gather(0, cand), tuple(metrics), torch.stack(means),
                       torch.stack(stds), thresh, above, inside, is_pos)


@torch.no_grad()
def atss_assign(
    anchors: Tensor,
    num_anchors_per_level: list[int],
    gt_boxes: Tensor,
    *,
    topk: int = 9,
    offset: float = 1.0,
    num_anchors_per_location: int = 1,
    details: bool = False,
) -> Tensor | ATSSDetails:
    """Index of the assigned GT per anchor, or -1 -> (A,) int64 (:class:`ATSSDetails` with
    ``details=True``: candidates, their IoUs, mean, std, threshold, positives).

    anchors (A, 4) xyxy, levels concatenated; gt_boxes (G, 4). ``offset=1`` reproduces
    sfzhang15/ATSS (IoU with +1), ``offset=0`` mmdetection's ATSSAssigner (whose top-k is not
    multiplied by the anchors per location: pass ``num_anchors_per_location=1``).

    1. IoU(anchor, GT) for all pairs.
    2. Distances between anchor centres and GT centres.
    3. Per level, the ``topk * A`` anchors nearest to each GT are its candidates.
    4. Per GT, threshold = mean + unbiased std of the candidates' IoUs; positive iff IoU >= it.
    5. The anchor centre must lie inside the GT by more than 0.01.
    6. An anchor positive for several GTs goes to the one with the highest IoU.
    """
    num_anchors, num_gts = anchors.shape[0], gt_boxes.shape[0]
    if num_gts == 0 or num_anchors == 0:
        matched = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
        return empty_details(matched, num_gts, 1, anchors.dtype) if details else matched
    anchor_ctr = box_centers(anchors)  # (A, 2)
    k = topk * num_anchors_per_location
    if details:
        ious = box_iou(anchors, gt_boxes, offset=offset)  # 1. (A, G)
        cand = atss_candidates(anchor_ctr, box_centers(gt_boxes), num_anchors_per_level, k)  # 2-3. (K, G)
        levels = candidate_levels(num_anchors_per_level, k, anchors.device)  # (K,)
        return atss_select_details(ious, cand, (ious.gather(0, cand),), anchor_ctr, gt_boxes, levels)
    merge = BlockMerge(num_anchors, anchors.device, anchors.dtype)
    for block in gt_blocks(num_anchors, num_gts):  # one block unless there are thousands of GTs
        gts = gt_boxes[block]
        ious = box_iou(anchors, gts, offset=offset)  # 1. (A, G_b)
        cand = atss_candidates(anchor_ctr, box_centers(gts), num_anchors_per_level, k)  # 2-3. (K, G_b)
        thresh = candidate_threshold(ious.gather(0, cand))  # 4. (G_b,)
        above, inside = above_and_inside(ious, cand, thresh, anchor_ctr, gts)  # 4-5. (K, G_b)
        merge.add(block, *resolve_best(ious, cand, above & inside))  # 6.
    return merge.matched


def pair_inside(points: Tensor, boxes: Tensor, margin: float = 0.01) -> Tensor:
    """points (N, 2) strictly inside the matching boxes (N, 4) by more than ``margin`` -> (N,)."""
    d = torch.stack(
        (points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1], boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]),
        dim=1,
    )
    return d.amin(dim=1) > margin
