"""Test-time augmentation of the maskrcnn-benchmark family (SPEC §1.10, ``TEST.BBOX_AUG``).

Switched on by ``model.tta.enabled=true`` (the ``*_ms_test`` presets); the detector's eval-mode
``forward`` then calls :func:`tta_forward`. Per image:

1. Run the model at the test size (``min_size_test`` / ``max_size_test``) and, with ``hflip``,
   on the horizontally flipped resized image (boxes flipped back with the pixel offset).
2. For every extra scale S (``scales``): long-side cap ``max_size`` (3000), or
   ``max_size_test`` when S < 800; run (and, with ``scale_hflip``, run flipped); keep the
   boxes whose (w + 1)(h + 1) lies strictly inside (lo², hi²) of that scale's range. The
   test-size runs are never range-filtered.
3. Rescale every run's boxes per axis to the test-size image; concatenate.
4. ``vote=True`` (every published config): each run already applied NMS / top-100 (and PAA's
   score voting); per class, greedily take the best box and the boxes with IoU (+1) >= ``vote_thresh``
   to it; a single box is kept; a cluster becomes its score-weighted mean box with the cluster's
   max score, and with ``merge="soft-vote"`` each member is also kept with score x (1 - IoU to the
   best box) when that is >= the model's ``score_thresh``. Keep ``detections_per_img`` (1000)
   by the k-th-value rule.
   ``vote=False``: runs return their pre-NMS candidates; one class-wise NMS (``nms_thresh``) and
   the top ``model.detections_per_img`` over all of them.
5. Boxes are rescaled to the input image.

Images are resized and normalised by the model's own transform (``ImageTransform.prepare``: PIL's
exact bilinear for uint8 on the CPU), then flipped and padded alone (batch size 1).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..boxes import box_iou, flip_boxes
from ..nn import pad_batch, resize_size
from ..postprocess import kth_value_top, nms_top_k, select_candidates
from ..variants import TTAMerge
from .common import rescale_boxes

__all__ = ["tta_forward", "vote_merge", "remove_boxes_out_of_range"]


def remove_boxes_out_of_range(boxes: Tensor, lo: float, hi: float, *, offset: float = 1.0) -> Tensor:
    """Mask of boxes (N, 4) with lo² < (w + offset)(h + offset) < hi² (strict)."""
    area = (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)
    return (area > lo * lo) & (area < hi * hi)


def _vote_one_class(boxes: Tensor, scores: Tensor, thresh: float, *, soft: bool, score_thresh: float,
                    offset: float) -> tuple[Tensor, Tensor]:
    """The (soft-)vote of SPEC §1.10 step 4 for the boxes (N, 4) of one class."""
    if len(boxes) <= 1:
        return boxes, scores
    order = scores.argsort(descending=True, stable=True)
    boxes, scores = boxes[order], scores[order]
    iou = box_iou(boxes, boxes, offset=offset)  # (N, N)
    alive = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    out_b, out_s = [], []
    while bool(alive.any()):
        top = int(torch.nonzero(alive)[0])
        members = alive & (iou[top] >= thresh)
        members[top] = True
        idx = torch.nonzero(members).squeeze(1)  # (M,) in score order, top first
        alive &= ~members
        b, s = boxes[idx], scores[idx]
        if len(idx) == 1:
            out_b.append(b)
            out_s.append(s)
            continue
        merged = (b * s[:, None]).sum(dim=0, keepdim=True) / s.sum()  # (1, 4) score-weighted mean
        out_b.append(merged)
        out_s.append(s.max().reshape(1))
        if soft:
            decayed = s * (1 - iou[top, idx])  # (M,)
            ok = decayed >= score_thresh
            out_b.append(b[ok])
            out_s.append(decayed[ok])
    b, s = torch.cat(out_b), torch.cat(out_s)
    if soft:
        order = s.argsort(descending=True, stable=True)
        b, s = b[order], s[order]
    return b, s


def vote_merge(boxes: Tensor, scores: Tensor, labels: Tensor, *, thresh: float = 0.66, soft: bool = True,
               score_thresh: float = 0.05, max_detections: int = 1000, offset: float = 1.0) -> dict[str, Tensor]:
    """Class by class (ascending label) vote merge, then the k-th-value top ``max_detections``.

    boxes (N, 4), scores (N,), labels (N,) of all runs in one image's coordinates."""
    out_b, out_s, out_l = [], [], []
    for c in torch.unique(labels).tolist():
        sel = labels == c
        b, s = _vote_one_class(boxes[sel], scores[sel], thresh, soft=soft, score_thresh=score_thresh, offset=offset)
        out_b.append(b)
        out_s.append(s)
        out_l.append(torch.full((len(b),), c, dtype=labels.dtype, device=labels.device))
    if not out_b:
        return {"boxes": boxes.new_zeros(0, 4), "scores": scores.new_zeros(0), "labels": labels.new_zeros(0)}
    b, s, lab = torch.cat(out_b), torch.cat(out_s), torch.cat(out_l)
    keep = kth_value_top(s, max_detections)
    b, s, lab = b[keep], s[keep], lab[keep]
    order = s.argsort(descending=True, stable=True)
    return {"boxes": b[order], "scores": s[order], "labels": lab[order]}


def _run(model, image: Tensor, min_size: int, max_size: int, hflip: bool, vote: bool):
    """One augmented run -> boxes (in the resized image), scores, labels, resized size (H, W)."""
    tr = model.transform
    h, w = image.shape[-2:]
    size = resize_size(h, w, min_size, max_size, tr.resize_rule)
    x = tr.prepare(image, size)  # (3, H', W')
    if hflip:
        x = x.flip(-1)  # a permutation: commutes with the per-channel normalisation
    batch = pad_batch([x], tr.size_divisible)  # (1, 3, H, W)
    feats = model.features(batch)
    logits, deltas, quality = model.head(feats)
    anchors, num_per_level = model.anchors(feats)
    if vote:
        det = model.postprocess(logits, deltas, quality, anchors, num_per_level, [size], [size])[0]
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
    else:
        c = model.cfg
        boxes, scores, labels = select_candidates(
            logits[0], deltas[0], quality[0], anchors, num_per_level, size, model.coder,
            score_thresh=c.score_thresh, pre_nms_top_n=c.pre_nms_top_n, sqrt_rank=model.sqrt_rank,
            offset=model.offset)
    if hflip:
        boxes = flip_boxes(boxes, size[1], offset=model.offset)
    return boxes, scores, labels, size


@torch.no_grad()
def tta_forward(model, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """Eval-mode forward of a dense detector with the augmentation of ``model.cfg.tta``."""
    c, t = model.cfg, model.cfg.tta
    if len(t.scale_ranges) != len(t.scales):
        raise ValueError(f"model.tta.scales ({len(t.scales)}) and model.tta.scale_ranges ({len(t.scale_ranges)}) "
                         "must have the same length")
    tr = model.transform
    results = []
    for image in images:
        runs = [(tr.min_size_test, tr.max_size_test, False, None)]
        if t.hflip:
            runs.append((tr.min_size_test, tr.max_size_test, True, None))
        for s, rng in zip(t.scales, t.scale_ranges):
            max_size = t.max_size if s >= 800 else tr.max_size_test
            runs.append((s, max_size, False, rng))
            if t.scale_hflip:
                runs.append((s, max_size, True, rng))
        all_b, all_s, all_l = [], [], []
        size0 = None
        for min_size, max_size, flip, rng in runs:
            b, s, lab, size = _run(model, image, min_size, max_size, flip, t.vote)
            if rng is not None:
                ok = remove_boxes_out_of_range(b, rng[0], rng[1], offset=model.offset)
                b, s, lab = b[ok], s[ok], lab[ok]
            if size0 is None:
                size0 = size
            else:  # per-axis rescale to the test-size run (no +1 correction)
                b = rescale_boxes(b, size, size0)
            all_b.append(b)
            all_s.append(s)
            all_l.append(lab)
        b, s, lab = torch.cat(all_b), torch.cat(all_s), torch.cat(all_l)
        if t.vote:
            det = vote_merge(b, s, lab, thresh=t.vote_thresh, soft=t.merge is TTAMerge["soft-vote"], score_thresh=c.score_thresh,
                             max_detections=t.detections_per_img, offset=model.offset)
        else:
            keep = nms_top_k(b, s, lab, c.nms_thresh, c.detections_per_img, offset=model.offset)
            det = {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}
        det["boxes"] = rescale_boxes(det["boxes"], size0, tuple(image.shape[-2:]))
        results.append(det)
    return results
