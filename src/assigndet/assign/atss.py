"""Adaptive Training Sample Selection (ATSS, Zhang et al. CVPR 2020), SPEC §2.2."""
from __future__ import annotations

import torch
from torch import Tensor

from ..boxes import box_centers, box_iou


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


@torch.no_grad()
def atss_assign(
    anchors: Tensor,
    num_anchors_per_level: list[int],
    gt_boxes: Tensor,
    *,
    topk: int = 9,
    offset: float = 1.0,
    num_anchors_per_location: int = 1,
) -> Tensor:
    """Index of the assigned GT per anchor, or -1 -> (A,) int64.

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
    num_anchors = anchors.shape[0]
    num_gts = gt_boxes.shape[0]
    if num_gts == 0 or num_anchors == 0:
        return torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    ious = box_iou(anchors, gt_boxes, offset=offset)  # 1. (A, G)
    anchor_ctr = box_centers(anchors)  # (A, 2)
    cand = atss_candidates(anchor_ctr, box_centers(gt_boxes), num_anchors_per_level, topk * num_anchors_per_location)  # 2-3. (K, G)
    cand_ious = ious.gather(0, cand)  # (K, G)
    thresh = cand_ious.mean(dim=0) + cand_ious.std(dim=0)  # 4. (G,) unbiased std
    is_pos = cand_ious >= thresh[None, :]  # (K, G)
    gt_idx = torch.arange(num_gts, device=anchors.device).expand_as(cand)  # (K, G)
    # 5. centre inside its GT: per (candidate, GT) pair
    pts = anchor_ctr[cand.reshape(-1)]  # (K*G, 2)
    inside = pair_inside(pts, gt_boxes[gt_idx.reshape(-1)])  # (K*G,)
    is_pos &= inside.view_as(is_pos)
    # 6. resolve multiple GTs by the highest IoU; non-positive pairs count as -inf
    masked = torch.full_like(ious, -1e8)  # (A, G)
    flat = cand * num_gts + gt_idx  # (K, G) indices into the flattened (A, G) matrix
    sel = flat[is_pos]
    masked.view(-1)[sel] = ious.view(-1)[sel]
    best, best_gt = masked.max(dim=1)  # (A,)
    return torch.where(best > -1e8, best_gt, torch.full_like(best_gt, -1))


def pair_inside(points: Tensor, boxes: Tensor, margin: float = 0.01) -> Tensor:
    """points (N, 2) strictly inside the matching boxes (N, 4) by more than ``margin`` -> (N,)."""
    d = torch.stack(
        (points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1], boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]),
        dim=1,
    )
    return d.amin(dim=1) > margin
