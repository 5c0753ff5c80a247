"""Dense-detector post-processing (SPEC §1.9): per level threshold and top-k, decode, clip,
class-wise NMS with the pixel offset, the k-th-value top-N rule."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import guard_or_true
from torchvision.ops import batched_nms, nms

from ..boxes import BoxCoder, clip_boxes
from ..variants import Arch
from .voting import score_voting as vote_boxes


def nms_with_offset(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, *, offset: float = 1.0) -> Tensor:
    """Class-wise NMS (suppress IoU > threshold) with the +offset IoU; indices by decreasing score.

    IoU with offset 1 equals torchvision's IoU on boxes whose x2, y2 are shifted by +1.
    """
    if offset:
        boxes = torch.cat((boxes[:, :2], boxes[:, 2:] + offset), dim=1)
    return class_wise_nms(boxes, scores, labels, iou_threshold)


def class_wise_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's ``batched_nms``; while ``torch.export`` traces (the ONNX exporter too), its
    coordinate trick without the size tests on the data: boxes of each class shifted apart by
    (label x (max coordinate + 1)), one NMS (ONNX ``NonMaxSuppression``) -> kept indices by
    decreasing score."""
    if not torch.compiler.is_exporting():
        return batched_nms(boxes, scores, labels, iou_threshold)
    top = torch.cat((boxes.flatten(), boxes.new_zeros(1))).max()  # () also for no boxes
    shifted = boxes + (labels.to(boxes) * (top + 1))[:, None]  # (N, 4)
    return nms(shifted, scores, iou_threshold)


def kth_value_top(scores: Tensor, k: int) -> Tensor:
    """Mask keeping every score >= the k-th largest (can keep more than k on exact ties); all of
    them when there are at most k. Without a test on the count (exportable, ONNX ``TopK``): the
    k-th largest of the scores padded with k times -inf."""
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    padded = torch.cat((scores, scores.new_full((k,), -torch.inf)))  # (n + k,)
    thresh = padded.topk(k).values[k - 1]  # the k-th largest, -inf when n < k
    return scores >= thresh


def nms_top_k(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, k: int, *, offset: float = 1.0) -> Tensor:
    """Class-wise NMS with the offset IoU, then the k-th-value top-``k`` rule -> kept indices by
    decreasing score (SPEC §1.9 steps 6-7)."""
    keep = nms_with_offset(boxes, scores, labels, iou_threshold, offset=offset)  # sorted by score
    return keep[kth_value_top(scores[keep], k)]


def select_candidates(
    logits: Tensor,
    deltas: Tensor,
    quality: Tensor,
    anchors: Tensor,
    num_anchors_per_level: list[int],
    image_size: tuple[int, int],
    coder: BoxCoder,
    *,
    score_thresh: float = 0.05,
    pre_nms_top_n: int = 1000,
    sqrt_rank: bool = False,
    offset: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1-5 of SPEC §1.9 for one image: candidate boxes (K, 4), scores sqrt(p q) (K,), labels (K,).

    logits (A, C) raw; deltas (A, 4); quality (A,) raw logits; anchors (A, 4).
    """
    num_classes = logits.shape[1]
    probs = logits.sigmoid()  # (A, C)
    q = quality.sigmoid()  # (A,)
    boxes_out, scores_out, labels_out = [], [], []
    start = 0
    for n in num_anchors_per_level:
        p = probs[start : start + n]  # (n, C)
        ql = q[start : start + n]
        flat = torch.nonzero((p > score_thresh).flatten()).squeeze(1)  # candidate (anchor, class) pairs
        rank = p.flatten()[flat] * ql[flat // num_classes]  # (K,)
        if sqrt_rank:
            rank = rank.sqrt()
        # eager: top-k only above pre_nms_top_n; traced for export (count unknown): always, the same set
        if guard_or_true(flat.numel() > pre_nms_top_n):
            flat = flat[rank.topk(torch.sym_min(flat.numel(), pre_nms_top_n), sorted=False).indices]
        a = flat // num_classes + start
        c = flat % num_classes
        pq = probs[a, c] * q[a]
        boxes_out.append(coder.decode(deltas[a], anchors[a]))
        scores_out.append(pq.sqrt())
        labels_out.append(c)
        start += n
    boxes = clip_boxes(torch.cat(boxes_out), image_size, offset=offset)
    return boxes, torch.cat(scores_out), torch.cat(labels_out)


def dense_postprocess(
    logits: Tensor,
    deltas: Tensor,
    quality: Tensor,
    anchors: Tensor,
    num_anchors_per_level: list[int],
    image_size: tuple[int, int],
    coder: BoxCoder,
    *,
    score_thresh: float = 0.05,
    pre_nms_top_n: int = 1000,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    sqrt_rank: bool = False,
    offset: float = 1.0,
    score_voting: bool = False,
    score_voting_sigma: float = 0.025,
) -> dict[str, Tensor]:
    """Detections of one image in resized-image pixels: dict(boxes (N, 4), scores (N,), labels (N,))."""
    boxes, scores, labels = select_candidates(
        logits, deltas, quality, anchors, num_anchors_per_level, image_size, coder,
        score_thresh=score_thresh, pre_nms_top_n=pre_nms_top_n, sqrt_rank=sqrt_rank, offset=offset,
    )
    keep = nms_top_k(boxes, scores, labels, nms_thresh, detections_per_img, offset=offset)
    out_boxes = boxes[keep]
    if score_voting:
        out_boxes = vote_boxes(out_boxes, labels[keep], boxes, scores, labels, sigma=score_voting_sigma, offset=offset)
    return {"boxes": out_boxes, "scores": scores[keep], "labels": labels[keep]}


def _mmdet_atss_candidates(probs: Tensor, q: Tensor, deltas: Tensor, anchors: Tensor, num_anchors_per_level: list[int],
                           coder: BoxCoder, score_thresh: float, pre_nms_top_n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per level the (anchor, class) pairs with p > thresh, the top ``pre_nms_top_n`` by p alone
    -> decoded boxes (N, 4), scores p * q (N,), labels (N,)."""
    boxes_l, scores_l, labels_l = [], [], []
    start = 0
    for n in num_anchors_per_level:
        p = probs[start : start + n]  # (n, C)
        mask = p > score_thresh  # (n, C)
        vals = p[mask]  # (K,) row-major: anchor, then class
        pairs = torch.nonzero(mask)  # (K, 2)
        vals, order = vals.sort(descending=True)
        k = min(pre_nms_top_n, vals.numel())
        pairs = pairs[order[:k]]
        a = pairs[:, 0] + start
        boxes_l.append(coder.decode(deltas[a], anchors[a]))
        scores_l.append(vals[:k] * q[a])  # (k,)
        labels_l.append(pairs[:, 1])
        start += n
    return torch.cat(boxes_l), torch.cat(scores_l), torch.cat(labels_l)


def _mmdet_paa_candidates(probs: Tensor, q: Tensor, deltas: Tensor, anchors: Tensor, num_anchors_per_level: list[int],
                          coder: BoxCoder, pre_nms_top_n: int) -> tuple[Tensor, Tensor]:
    """Per level the top ``pre_nms_top_n`` anchors by max_c sqrt(p q), no threshold -> decoded
    boxes (N, 4), scores sqrt(p q) (N, C)."""
    boxes_l, scores_l = [], []
    start = 0
    for n in num_anchors_per_level:
        if 0 < pre_nms_top_n < n:
            best = (probs[start : start + n] * q[start : start + n, None]).sqrt().max(dim=1).values  # (n,)
            a = best.topk(pre_nms_top_n).indices + start
        else:
            a = torch.arange(start, start + n, device=probs.device)
        boxes_l.append(coder.decode(deltas[a], anchors[a]))
        scores_l.append((probs[a] * q[a, None]).sqrt())  # (k, C)
        start += n
    return torch.cat(boxes_l), torch.cat(scores_l)


def mmdet_postprocess(
    logits: Tensor,
    deltas: Tensor,
    quality: Tensor,
    anchors: Tensor,
    num_anchors_per_level: list[int],
    image_size: tuple[int, int],
    orig_size: tuple[int, int],
    coder: BoxCoder,
    *,
    method: Arch | str,
    score_thresh: float = 0.05,
    pre_nms_top_n: int = 1000,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    score_voting: bool = False,
    score_voting_sigma: float = 0.025,
) -> dict[str, Tensor]:
    """mmdetection's inference rules for its ATSS / PAA ports (SPEC §6), one image; boxes in the
    pixels of the *original* image (mmdetection rescales before NMS). No +1 anywhere.

    ``method=Arch.atss`` (v3 ``filter_scores_and_topk``): per level the (anchor, class) pairs with
    p > thresh, the top ``pre_nms_top_n`` of them **by p alone**; decode, clip to [0, W] x [0, H];
    rescale; score = p * centerness (no sqrt); drop boxes with w <= 0 or h <= 0; class-wise NMS;
    the first ``detections_per_img``.
    ``method=Arch.paa``: per level the top ``pre_nms_top_n`` *anchors* by max_c sqrt(p q), no
    threshold; decode, clip, rescale; scores sqrt(p q); pairs with score > thresh; class-wise NMS;
    the first ``detections_per_img``; score voting over all those pairs (IoU without +1).

    logits (A, C), deltas (A, 4), quality (A,) raw; anchors (A, 4).
    """
    method = Arch(method)
    if method not in (Arch.atss, Arch.paa):
        raise ValueError(f"mmdet post-processing exists for 'atss' and 'paa', not {method.value!r}")
    probs = logits.sigmoid()  # (A, C)
    q = quality.sigmoid()  # (A,)
    h, w = image_size
    # mmdetection divides by scale_factor = (new_w / w, new_h / h)
    scale = logits.new_tensor([w / orig_size[1], h / orig_size[0]]).repeat(2)  # (4,)
    if method is Arch.atss:
        boxes, scores, labels = _mmdet_atss_candidates(probs, q, deltas, anchors, num_anchors_per_level, coder,
                                                       score_thresh, pre_nms_top_n)
        boxes = clip_boxes(boxes, image_size, offset=0.0) / scale  # (N, 4)
        ok = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)  # min_bbox_size = 0
        boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    boxes, nms_scores = _mmdet_paa_candidates(probs, q, deltas, anchors, num_anchors_per_level, coder, pre_nms_top_n)
    boxes = clip_boxes(boxes, image_size, offset=0.0) / scale  # (N, 4)
    mask = nms_scores > score_thresh  # (N, C)
    pairs = torch.nonzero(mask)  # (K, 2)
    cand_boxes, cand_scores = boxes[pairs[:, 0]], nms_scores[mask]
    cand_labels = pairs[:, 1]
    keep = batched_nms(cand_boxes, cand_scores, cand_labels, nms_thresh)[:detections_per_img]
    out_boxes = cand_boxes[keep]
    if score_voting and keep.numel() > 0:
        out_boxes = vote_boxes(out_boxes, cand_labels[keep], cand_boxes, cand_scores, cand_labels,
                               sigma=score_voting_sigma, offset=0.0)
    return {"boxes": out_boxes, "scores": cand_scores[keep], "labels": cand_labels[keep]}
