"""PAA's score voting (SPEC §3.4): refine each kept detection by a score- and IoU-weighted
average of the pre-NMS candidate boxes of its class.

Shape letters: K kept detections, N pre-NMS candidates.
"""
from __future__ import annotations

import torch
from torch import Tensor

from assigndet.boxes import box_iou

__all__ = ["score_voting"]

#: Candidates vote for a detection only when their IoU with it is above this.
VOTING_IOU_THRESHOLD = 0.01


@torch.no_grad()
def score_voting(
    det_boxes: Tensor,
    det_labels: Tensor,
    cand_boxes: Tensor,
    cand_scores: Tensor,
    cand_labels: Tensor,
    *,
    sigma: float = 0.025,
    offset: float = 1.0,
) -> Tensor:
    """Score voting of kept detections, all at once (no loop over detections or classes).

    For detection d and every candidate b of the same label with IoU(d, b) > 0.01 (IoU with
    ``offset``; d itself is normally among the candidates):
    w_b = exp(−(1 − IoU(d, b))² / sigma) · s_b, and the new box is Σ w_b·b / Σ w_b, coordinate-wise.
    Scores and labels are not changed (the caller keeps them). A detection without any voting
    candidate keeps its box (so does every detection when there is no candidate: no test on the
    counts, the function exports).

    Args:
        det_boxes: (K, 4) detections after NMS and the top-k cut; det_labels: (K,).
        cand_boxes: (N, 4) pre-NMS candidates of the same image; cand_scores: (N,) their scores
            (√(p·q) for PAA); cand_labels: (N,) in the same label space as ``det_labels``.
        sigma: the Gaussian width (0.025 in every PAA config).
        offset: pixel convention of the IoU (1 = original PAA, 0 = mmdetection).
    Returns:
        (K, 4) voted boxes, in the dtype of ``det_boxes``.
    """
    iou = box_iou(det_boxes, cand_boxes.to(det_boxes.dtype), offset=offset)  # (K, N)
    votes = (det_labels[:, None] == cand_labels[None, :]) & (iou > VOTING_IOU_THRESHOLD)  # (K, N)
    w = torch.exp(-(1 - iou).square() / sigma) * cand_scores.to(iou.dtype)[None, :]  # (K, N)
    w = torch.where(votes, w, torch.zeros_like(w))  # (K, N)
    total = w.sum(dim=1, keepdim=True)  # (K, 1)
    voted = (w @ cand_boxes.to(w.dtype)) / total  # (K, 4)
    return torch.where(total > 0, voted, det_boxes)
