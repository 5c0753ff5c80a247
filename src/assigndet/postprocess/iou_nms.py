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
from ..variants import IoURank

__all__ = ["iou_guided_nms", "refine_boxes"]


@torch.no_grad()
def iou_guided_nms(
    boxes: Tensor,
    scores: Tensor,
    ious: Tensor,
    labels: Tensor,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.05,
    rank_by: IoURank | str = IoURank.iou,
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
        rank_by: an :class:`~assigndet.variants.IoURank` or its spelling.

    Returns:
        keep: (N,) int64 indices into the K inputs, in output order.
        out_scores: (N,) the output scores (descending). ``ious[keep]`` are the kept boxes' IoUs.
    """
    rank_by = IoURank(rank_by)
    # 1. score threshold
    cand = torch.nonzero(scores >= score_threshold).squeeze(1)  # (Kc,)
    if cand.numel() == 0:
        return cand, scores.new_zeros((0,))
    cand_boxes = boxes[cand]  # (Kc, 4)
    cand_scores = scores[cand]  # (Kc,)
    cand_labels = labels[cand]  # (Kc,)
    key = _rank_key(rank_by, cand_scores, ious[cand])  # 2. (Kc,)
    # 3. class-wise greedy NMS via the class-offset trick (as the reference)
    offset_boxes = cand_boxes + (cand_labels.to(cand_boxes.dtype) * (cand_boxes.max() + 1))[:, None]  # (Kc, 4)
    kept = nms(offset_boxes, key, iou_threshold)  # (N,) into cand, by descending key
    if rank_by is IoURank.score:
        out_scores = cand_scores[kept]  # (N,) already descending
        return cand[kept], out_scores
    cluster_scores = _cluster_scores(offset_boxes, cand_scores, kept, iou_threshold)  # 4. (N,)
    # 5. sort by the cluster score
    out_scores, order = cluster_scores.sort(descending=True, stable=True)  # (N,)
    return cand[kept[order]], out_scores


def _rank_key(rank_by: IoURank, scores: Tensor, ious: Tensor) -> Tensor:
    """Step 2 of :func:`iou_guided_nms`: the NMS ranking key of the candidates (Kc,)."""
    if rank_by is IoURank.iou:
        return ious
    if rank_by is IoURank.score_iou:
        return scores * ious
    return scores


def _cluster_scores(boxes: Tensor, scores: Tensor, kept: Tensor, iou_threshold: float) -> Tensor:
    """Step 4 of :func:`iou_guided_nms`: each candidate (Kc,) goes to the first kept box (rank
    order) it overlaps by > ``iou_threshold``; the max score over each kept box's cluster -> (N,)."""
    overlaps = box_iou(boxes[kept], boxes, offset=0.0) > iou_threshold  # (N, Kc)
    owner = overlaps.to(torch.uint8).argmax(dim=0)  # (Kc,) first overlapping kept row
    owned = overlaps.any(dim=0)  # (Kc,)
    in_cluster = (owner[None, :] == torch.arange(kept.numel(), device=kept.device)[:, None]) & owned[None, :]  # (N, Kc)
    empty_value = scores.min() - 1  # a kept box with an empty cluster (degenerate box), as the reference
    return torch.where(in_cluster, scores[None, :], empty_value).amax(dim=1)  # (N,)


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
            cur, cur_iou = _ascent_step(cur, cur_iou, active, iou_fn, step_size, last=step == steps - 1)
            new_val = cur_iou.detach()  # (K,)
            stop = ((final_iou - new_val).abs() < omega1) | ((new_val - final_iou) < omega2)  # (K,)
            final_iou = torch.where(active, new_val, final_iou)  # (K,) stopped boxes keep IoU_new
            active = active & ~stop
    return cur.detach(), final_iou


def _ascent_step(
    cur: Tensor, cur_iou: Tensor, active: Tensor, iou_fn: Callable[[Tensor], Tensor], step_size: float, *, last: bool
) -> tuple[Tensor, Tensor]:
    """One step of :func:`refine_boxes`: box += step_size * dIoU/dbox * (w, h, w, h) for the active
    boxes (K, 4), and the new IoUs (K,) (with a graph to the new boxes unless ``last``)."""
    (grad,) = torch.autograd.grad(cur_iou.sum(), cur)  # (K, 4)
    box = cur.detach()  # (K, 4)
    w = box[:, 2] - box[:, 0]  # (K,)
    h = box[:, 3] - box[:, 1]  # (K,)
    delta = step_size * grad * torch.stack((w, h, w, h), dim=1)  # (K, 4)
    new = torch.where(active[:, None], box + delta, box)  # (K, 4)
    if last:  # the last IoU needs no gradient: no graph
        with torch.no_grad():
            return new, iou_fn(new)  # (K,)
    new = new.requires_grad_(True)
    return new, iou_fn(new)  # (K,)
