"""IoU-Net inference: IoU-guided NMS and optimisation-based box refinement (SPEC §5.3, traps 19-20).

Both are pure functions over tensors. ``iou_guided_nms`` reproduces the unofficial reproduction's
``batched_iou_nms`` (guides "rank", "weight", "none" = ``rank_by`` "iou", "score_iou", "score");
``refine_boxes`` its ``refine_by_iou`` loop, with the IoU predictor passed in as a function.

Shape letters: K candidate boxes (e.g. RoI x class pairs), N kept boxes.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torchvision.ops import nms

from ..boxes import box_iou

__all__ = ["iou_guided_nms", "refine_boxes"]

_RANK_KEYS = ("iou", "score_iou", "score")


@torch.no_grad()
def iou_guided_nms(
    boxes: Tensor,
    scores: Tensor,
    ious: Tensor,
    labels: Tensor,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.05,
    rank_by: str = "iou",
) -> tuple[Tensor, Tensor]:
    """Class-wise NMS ranked by predicted IoU, scoring each kept box by its cluster's best class score.

    1. Keep the candidates with ``scores >= score_threshold`` (note >=).
    2. Ranking key: ``ious`` ("iou", the paper), ``scores * ious`` ("score_iou", the improved
       variant) or ``scores`` ("score", plain NMS).
    3. Greedy NMS per class on the key, suppressing IoU (no +1) > ``iou_threshold``. Classes are
       separated by the original's class-offset trick (each box shifted by label * (max coord + 1)),
       which also feeds step 4, so decisions match the reference bit for bit.
    4. "iou" / "score_iou": every candidate belongs to the first kept box, in rank order, that
       overlaps it by > ``iou_threshold`` (a kept box belongs to itself); a kept box's output score is
       the max classification score over its cluster. "score": a kept box keeps its own score.
    5. Sort the kept boxes by output score, descending.

    Args:
        boxes: (K, 4) xyxy boxes.
        scores: (K,) classification scores.
        ious: (K,) predicted IoUs (localisation confidence).
        labels: (K,) int64 class indices.
        iou_threshold: suppression threshold.
        score_threshold: candidate threshold on ``scores``.
        rank_by: "iou", "score_iou" or "score".

    Returns:
        keep: (N,) int64 indices into the K inputs, in output order.
        out_scores: (N,) the output scores (descending). ``ious[keep]`` are the kept boxes' IoUs.
    """
    if rank_by not in _RANK_KEYS:
        raise ValueError(f"rank_by must be one of {_RANK_KEYS}, got {rank_by!r}")
    # 1. score threshold
    cand = torch.nonzero(scores >= score_threshold).squeeze(1)  # (Kc,)
    if cand.numel() == 0:
        return cand, scores.new_zeros((0,))
    cand_boxes = boxes[cand]  # (Kc, 4)
    cand_scores = scores[cand]  # (Kc,)
    cand_labels = labels[cand]  # (Kc,)
    # 2. ranking key
    if rank_by == "iou":
        key = ious[cand]
    elif rank_by == "score_iou":
        key = cand_scores * ious[cand]
    else:
        key = cand_scores
    # 3. class-wise greedy NMS via the class-offset trick (as the reference)
    offset_boxes = cand_boxes + (cand_labels.to(cand_boxes.dtype) * (cand_boxes.max() + 1))[:, None]  # (Kc, 4)
    kept = nms(offset_boxes, key, iou_threshold)  # (N,) into cand, by descending key
    if rank_by == "score":
        out_scores = cand_scores[kept]  # (N,) already descending
        return cand[kept], out_scores
    # 4. clusters: each candidate goes to the first kept box (rank order) with IoU > thr
    overlaps = box_iou(offset_boxes[kept], offset_boxes, offset=0.0) > iou_threshold  # (N, Kc)
    owner = overlaps.to(torch.uint8).argmax(dim=0)  # (Kc,) first overlapping kept row
    owned = overlaps.any(dim=0)  # (Kc,)
    in_cluster = (owner[None, :] == torch.arange(kept.numel(), device=kept.device)[:, None]) & owned[None, :]  # (N, Kc)
    empty_value = cand_scores.min() - 1  # a kept box with an empty cluster (degenerate box), as the reference
    cluster_scores = torch.where(in_cluster, cand_scores[None, :], empty_value).amax(dim=1)  # (N,)
    # 5. sort by the cluster score
    out_scores, order = cluster_scores.sort(descending=True, stable=True)  # (N,)
    return cand[kept[order]], out_scores


def refine_boxes(
    boxes: Tensor,
    iou_fn: Callable[[Tensor], Tensor],
    *,
    steps: int = 5,
    omega1: float = 0.001,
    omega2: float = -0.01,
    step_size: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Optimisation-based refinement: gradient ascent of each box's predicted IoU (SPEC §5.3 step 5).

    ``iou_fn`` maps boxes (K, 4) to their predicted IoUs (K,), differentiably w.r.t. the boxes and
    box-wise independently (e.g. PrRoIPool + IoU head, the column of each box's class). It is always
    called with all K boxes in input order (boxes that stopped are passed unchanged and their
    updates masked), so one batched forward serves each step.

    0. IoU_0 = iou_fn(boxes).
    1. For t = 1..steps, for the still-active boxes:
       Delta = step_size * dIoU/d(x1, y1, x2, y2) * (w, h, w, h), with w, h of the box before the step
       (no +1); box += Delta (ascent, no clipping); IoU_new = iou_fn(box).
    2. A box stops when |IoU_prev - IoU_new| < omega1 or IoU_new - IoU_prev < omega2; it keeps its
       *new* position and IoU_new even when the IoU dropped (trap 19).
    3. Boxes still active after ``steps`` steps keep their last position and IoU.

    Args:
        boxes: (K, 4) boxes to refine (not modified).
        iou_fn: (K, 4) -> (K,) differentiable IoU predictor.
        steps: T, the most steps.
        omega1, omega2: stopping thresholds Omega_1, Omega_2.
        step_size: lambda (0.5 paper-faithful, 2.0 improved).

    Returns:
        boxes: (K, 4) refined boxes, in input order (detached).
        ious: (K,) their predicted IoUs (detached); multiply by the scores for IoU-Net's final score.
    """
    num = boxes.shape[0]
    if num == 0:
        return boxes.detach().clone(), boxes.new_zeros((0,))
    with torch.enable_grad():
        cur = boxes.detach().clone().requires_grad_(True)  # (K, 4)
        cur_iou = iou_fn(cur)  # (K,) with a graph to cur
        final_iou = cur_iou.detach()  # (K,)
        active = torch.ones(num, dtype=torch.bool, device=boxes.device)  # (K,)
        for step in range(steps):
            if not bool(active.any()):
                break
            (grad,) = torch.autograd.grad(cur_iou.sum(), cur)  # (K, 4)
            box = cur.detach()  # (K, 4)
            w = box[:, 2] - box[:, 0]  # (K,)
            h = box[:, 3] - box[:, 1]  # (K,)
            delta = step_size * grad * torch.stack((w, h, w, h), dim=1)  # (K, 4)
            new = torch.where(active[:, None], box + delta, box)  # (K, 4)
            if step < steps - 1:  # the last IoU needs no gradient: no graph
                new = new.requires_grad_(True)
                new_iou = iou_fn(new)  # (K,)
            else:
                with torch.no_grad():
                    new_iou = iou_fn(new)  # (K,)
            new_val = new_iou.detach()  # (K,)
            stop = ((final_iou - new_val).abs() < omega1) | ((new_val - final_iou) < omega2)  # (K,)
            final_iou = torch.where(active, new_val, final_iou)  # (K,) stopped boxes keep IoU_new
            active = active & ~stop
            cur, cur_iou = new, new_iou
    return cur.detach(), final_iou
