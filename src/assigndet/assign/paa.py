"""Probabilistic anchor assignment (PAA, kkhoot/PAA, SPEC §3.2), as pure tensor functions.

Read top to bottom, one section per step: A. :func:`paa_first_stage_match`, an IoU match at a low
threshold (the one matcher, maskrcnn-benchmark's or mmdetection's low-quality rule); B.
:func:`paa_anchor_scores`, focal loss summed over classes + (1 − GIoU) per anchor; C. per GT and
level the ≤ ``topk`` lowest-score candidates; D. a two-component GMM
(:func:`~assigndet.assign.gmm.gmm_fit`) on each GT's sorted scores and the cut that makes a prefix
positive. :func:`paa_partition` runs C–D and :func:`paa_assign` A–D, each for one image or a batch
(one score computation, one candidate selection, one GMM call for all images), returning the
intermediates with ``details=True``. Vectorised over GTs, levels and images, any device; one host
synchronisation per EM iteration plus a few for the dynamic candidate counts.

Shape letters: B images, A anchors (all levels of one image), L levels, G ground truths (of one
image, or M of a batch, concatenated), C classes, K candidates per GT (padded to the largest
count, ≤ L·topk), N = B·A flattened anchors of a batch.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..boxes import BoxCoder, box_iou, giou_loss
from ..losses import focal_loss_per_anchor
from ..variants import Convention, LowQuality, PAAVariant
from .gmm import GMMFit, gmm_fit
from .max_iou import max_iou_match

__all__ = ["GMMFit", "PAAAssignment", "PAAPartition", "gmm_fit", "paa_first_stage_match", "paa_anchor_scores",
           "paa_partition", "paa_assign", "paa_partition_details", "paa_partition_batch", "paa_assign_batch"]

#: Loc score of anchors that are not Step-A positives (the reference's ``INF``).
PAA_INF_SCORE = 1e8
#: mmdetection's PAA scores anchors with its configured GIoU loss weight (the original with 1).
MMDET_ANCHOR_SCORE_GIOU_WEIGHT = 1.3
#: Focal-loss hyper-parameters of the anchor score (SPEC §3.2 B).
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
#: GTs processed per block when building the (G, A) IoU matrix (bounds the temporaries).
_IOU_CHUNK = 64


# --- A. first-stage IoU match -----------------------------------------------------------------
@torch.no_grad()
def paa_first_stage_match(
    anchors: Tensor,
    gt_boxes: Tensor,
    *,
    iou_threshold: float = 0.1,
    offset: float = 1.0,
    rule: Convention | str = Convention.mrcnn,
) -> Tensor:
    """Step A of PAA for one image: IoU match at ``iou_threshold`` (high = low, no ignore band)
    -> (A,) int64, -1 unmatched. ``rule=Convention.mrcnn``: maskrcnn-benchmark's low-quality rescue
    (to the anchor's own argmax GT); ``Convention.mmdet``: ``MaxIoUAssigner(min_pos_iou=0)`` (the
    best anchors of a GT go to it, a later GT overwriting, SPEC §6). IoUs in blocks of GTs."""
    rule = Convention(rule)
    if len(gt_boxes) == 0:
        return torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device)
    gt_boxes = gt_boxes.to(anchors.dtype)
    iou = anchors.new_empty(len(gt_boxes), len(anchors))  # (G, A)
    for i in range(0, len(gt_boxes), _IOU_CHUNK):  # blocks of GTs, not a loop per GT
        iou[i : i + _IOU_CHUNK] = box_iou(gt_boxes[i : i + _IOU_CHUNK], anchors, offset=offset)
    low_quality = LowQuality.mmdet if rule is Convention.mmdet else LowQuality.detectron2
    return max_iou_match(iou, iou_threshold, iou_threshold, low_quality, min_pos_iou=0.0)


# --- B. anchor scores -------------------------------------------------------------------------
@torch.no_grad()
def paa_anchor_scores(
    anchors: Tensor,
    cls_logits: Tensor,
    box_regression: Tensor,
    matched_gt: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    offset: float = 1.0,
    loc_weight: float = 1.0,
    encode_targets: bool = True,
) -> Tensor:
    """Step B of PAA (SPEC §3.2, trap 10): the score of every anchor (lower = better), for one
    image or a batch (leading dimensions are flattened).

    score = Σ_c focal(cls_logits, step-A label: its GT's class, background when unmatched)
    + (1 − GIoU(decoded prediction, decode(encode(GT)))) for step-A positives, + 1e8 for the
    others; GIoU has no +1; weight 1. mmdetection's port (SPEC §6): ``loc_weight=1.3`` (its
    configured GIoU weight), ``encode_targets=False`` (the GT box itself, ``reg_decoded_bbox``).

    Args:
        anchors: (A, 4) or (..., A, 4), broadcast against ``box_regression``.
        cls_logits: (..., A, C) raw logits (detached or not; no gradient is recorded).
        box_regression: (..., A, 4) coder deltas.
        matched_gt: (..., A) int64 step-A match indexing ``gt_boxes`` (for a batch: indices into
            the concatenated GTs of all images), -1 unmatched (-2 ignore: no score terms).
        gt_boxes: (M, 4); gt_labels: (M,) 0-based classes.
    Returns:
        (..., A) scores in the dtype of ``cls_logits`` (float32 for half-precision logits).
    """
    shape = matched_gt.shape
    C = cls_logits.shape[-1]
    logits = cls_logits.reshape(-1, C)  # (..., A, C) -> (N, C)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    deltas = box_regression.reshape(-1, 4)  # (..., A, 4) -> (N, 4)
    anchors = anchors.expand(*box_regression.shape[:-1], 4).reshape(-1, 4)  # (N, 4)
    matched = matched_gt.reshape(-1)  # (..., A) -> (N,)
    # focal labels: the GT's class, C = background (unmatched), -1 = ignore
    labels = torch.where(matched == -1, C, -1)  # (N,)
    if gt_labels.numel():
        labels = torch.where(matched >= 0, gt_labels[matched.clamp(min=0)].long(), labels)
    cls = focal_loss_per_anchor(logits, labels, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA)  # (N,)
    loc = torch.full_like(cls, PAA_INF_SCORE)  # (N,)
    pos = torch.nonzero(matched >= 0).squeeze(1)  # (P,)
    if pos.numel() > 0:
        coder = BoxCoder(offset=offset)
        a = anchors[pos]  # (P, 4)
        pred = coder.decode(deltas[pos], a)  # (P, 4)
        target = gt_boxes[matched[pos]].to(a.dtype)  # (P, 4)
        if encode_targets:
            target = coder.decode(coder.encode(target, a), a)
        loc[pos] = (giou_loss(pred, target) * loc_weight).to(loc.dtype)
    return (cls + loc).view(shape)  # (N,) -> (..., A)


# --- C. candidates per GT and level -----------------------------------------------------------
def _level_of(local_idx: Tensor, num_anchors_per_level: Sequence[int]) -> Tensor:
    """Pyramid level (L,) of anchors given their index inside one image (P,) -> (P,)."""
    ends = torch.tensor(list(num_anchors_per_level), device=local_idx.device).cumsum(0)  # (L,)
    return torch.bucketize(local_idx, ends, right=True)


def _sortable_int(x: Tensor) -> Tensor:
    """Integers with the same order as the floats ``x`` (IEEE bits, negatives flipped)."""
    if x.dtype == torch.float64:  # bit views of the same shape
        bits, flip = x.view(torch.int64), 0x7FFFFFFFFFFFFFFF
    else:
        bits, flip = x.float().view(torch.int32), 0x7FFFFFFF
    return torch.where(bits < 0, bits ^ flip, bits)


def _first_position(sorted_keys: Tensor) -> Tensor:
    """For a sorted 1-D tensor, the position of each element within its run of equal keys."""
    return torch.arange(sorted_keys.numel(), device=sorted_keys.device) - torch.searchsorted(sorted_keys, sorted_keys)


def _prefilter(s: Tensor, idx: Tensor, group: Tensor, num_groups: int, topk: int) -> Tensor:
    """Positions (P',) of the matches worth sorting (large inputs sort slowly): each (GT, level)
    group is split into topk subsets by anchor index; the max of the subset minima is ≥ the
    group's topk-th smallest score, so keeping the scores ≤ it keeps every candidate (ties
    included) and drops most of the rest."""
    bucket = group * topk + idx % topk  # (P,)
    mins = torch.full((num_groups * topk,), torch.inf, dtype=s.dtype, device=s.device)
    mins.scatter_reduce_(0, bucket, s, "amin")  # (G·L·topk,) subset minima (inf if empty)
    bound = mins.view(num_groups, topk).amax(dim=1)  # (G·L,)
    return torch.nonzero(s <= bound[group]).squeeze(1)  # (P',)


def _select_candidates(
    scores: Tensor, matched: Tensor, num_anchors_per_level: Sequence[int], num_gts: int, topk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Step C on flattened anchors: per GT and level the ≤ topk lowest scores among its matches
    (exact ties: lower anchor index). scores (N,), images concatenated; matched (N,) int64
    first-stage GT index (global over the batch), < 0 = not a candidate -> cand_idx (G, K) int64
    (-1 padded), cand_scores (G, K) ascending (+inf padded), count (G,) int64; K = max count (≥ 1).
    """
    L, A = len(num_anchors_per_level), int(sum(num_anchors_per_level))
    idx = torch.nonzero(matched >= 0).squeeze(1)  # (P,) ascending anchor index
    s, g = scores[idx], matched[idx]  # (P,), (P,)
    local = idx % A if scores.numel() != A else idx  # (P,) index inside its image
    group = g * L + _level_of(local, num_anchors_per_level)  # (P,) (gt, level) id
    pre = _prefilter(s, idx, group, num_gts * L, topk)  # (P',)
    idx, s, g, group = idx[pre], s[pre], g[pre], group[pre]
    # order by (group, score, anchor index): stable sort by score, then stable sort by group
    # (integer keys: torch sorts them several times faster than floats)
    by_score = torch.sort(_sortable_int(s), stable=True).indices  # (P,)
    by_group = torch.sort(group[by_score], stable=True)
    keep_sorted = _first_position(by_group.values) < topk  # (P,) rank within (gt, level)
    keep = torch.zeros_like(keep_sorted)
    keep[by_group.indices] = keep_sorted  # back to score order
    sel = by_score[keep]  # (Q,) kept candidates in ascending score order
    # regroup by GT, keeping the ascending score order inside each GT
    by_gt = torch.sort(g[sel], stable=True)
    sel = sel[by_gt.indices]  # (Q,)
    cg = by_gt.values  # (Q,)
    slot = _first_position(cg)  # (Q,) position within the GT
    count = torch.bincount(cg, minlength=num_gts)  # (G,)
    K = max(int(count.max()), 1) if num_gts > 0 else 1
    cand_idx = torch.full((num_gts, K), -1, dtype=torch.int64, device=scores.device)
    cand_idx[cg, slot] = idx[sel]
    cand_scores = torch.full((num_gts, K), torch.inf, dtype=scores.dtype, device=scores.device)
    cand_scores[cg, slot] = s[sel]
    return cand_idx, cand_scores, count


# --- D. GMM and cut ---------------------------------------------------------------------------
class PAAPartition(NamedTuple):
    """Intermediates of :func:`paa_partition` (``details=True``). Rows are the GTs (of all images,
    concatenated); a GT's candidates are in ascending score order (ties: lower anchor index), not
    level by level; ``fit`` is the GMM over those rows (< 2 candidates: not fitted, ``n_iter`` 0)."""

    matched: Tensor  # (A,) or (B, A) int64 per-image GT index or -1 (what paa_partition returns)
    candidate_idxs: Tensor  # (G, K) int64 anchor indices inside the GT's image, -1 padded
    candidate_scores: Tensor  # (G, K) scores sorted ascending, +inf padded (input dtype)
    num_candidates: Tensor  # (G,) int64
    fit: GMMFit  # over the (G, K) rows
    cut: Tensor  # (G,) int64 last positive position in the sorted list, -1 if none
    is_positive: Tensor  # (G, K) bool


def _cut(fit: GMMFit, valid: Tensor, count: Tensor, variant: PAAVariant) -> tuple[Tensor, Tensor]:
    """Step D's cut on the fitted rows -> cut (G,) and is_positive (G, K).

    Component 0 (initialised at the minimum) is foreground by index; j = the first sorted
    position of a component-0 sample attaining the max mixture log-density among component-0
    samples. ``original``: one candidate → positive; else positions 0..j (component-1 samples
    before j included); no component-0 sample → all positive. ``mmdet`` (``paa_reassign``): < 2
    candidates or no component-0 sample → nothing; else the component-0 samples at 0..j.
    ``minimal`` (PAA_minimal): as ``original`` but the cut is j's index *within the component-0
    subset*, applied to the full list.
    """
    G, K = valid.shape
    pos_k = torch.arange(K, device=valid.device)  # (K,)
    fg = (fit.components == 0) & valid  # (G, K)
    has_fg = fg.any(dim=1)  # (G,)
    fg_density = torch.where(fg, fit.log_density, -torch.inf)  # (G, K)
    best = fg & (fg_density == fg_density.amax(dim=1, keepdim=True))  # (G, K)
    j = torch.where(best, pos_k, K).amin(dim=1)  # (G,) first position of the max fg density
    fitted = has_fg & (count >= 2)  # (G,)
    if variant is PAAVariant.minimal:
        # PAA_minimal's cut bug (SPEC §3.7): the index of the max *within the fg subset* is used
        # as the cut position in the full sorted list; otherwise as the original
        j_sub = torch.where(best, fg.cumsum(dim=1) - 1, K).amin(dim=1)  # (G,)
        cut = torch.where(fitted, j_sub, count - 1)
        is_pos = pos_k <= cut[:, None]
    elif variant is PAAVariant.original:
        # 1 candidate → positive; no fg → all positive; else prefix 0..j
        cut = torch.where(fitted, j, count - 1)  # (G,)
        is_pos = pos_k <= cut[:, None]  # (G, K)
    else:
        # mmdetection: < 2 candidates → none; the fg samples among positions 0..j; no fg → none
        cut = torch.where(fitted, j, -1)
        is_pos = fg & (pos_k <= cut[:, None]) & (count[:, None] >= 2)
    return cut, is_pos & valid


def _partition_flat(
    scores: Tensor, matched: Tensor, num_anchors_per_level: Sequence[int], num_gts: int, topk: int,
    variant: PAAVariant,
) -> PAAPartition:
    """Steps C–D on N flattened anchors with global GT indices; ``matched`` of the result is (N,)."""
    N, device = scores.numel(), scores.device
    cand_idx, cand_scores, count = _select_candidates(scores, matched, num_anchors_per_level, num_gts, topk)  # C.
    G, K = cand_idx.shape
    valid = torch.arange(K, device=device) < count[:, None]  # (G, K)
    fit = gmm_fit(cand_scores, valid)  # D. rows with < 2 candidates are not fitted
    cut, is_pos = _cut(fit, valid, count, variant)
    # scatter GT indices to the positive anchors; other slots go to a dummy entry N
    target = torch.where(is_pos, cand_idx, N).view(-1)  # (G·K,)
    gt_ids = torch.arange(G, device=device)[:, None].expand(G, K).reshape(-1)  # (G·K,)
    out = torch.full((N + 1,), -1, dtype=torch.int64, device=device)
    out.scatter_(0, target, gt_ids)
    return PAAPartition(out[:N], cand_idx, cand_scores, count, fit, cut, is_pos)


def _to_global(matched: Tensor, num_gts: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Per-image GT indices (B, A) -> indices into the concatenated GTs, and the offsets (B, 1)."""
    starts = [sum(num_gts[:b]) for b in range(len(num_gts))]
    offsets = torch.tensor(starts, dtype=torch.int64, device=matched.device)[:, None]  # (B, 1)
    return torch.where(matched >= 0, matched + offsets, matched), offsets


@torch.no_grad()
def paa_partition(
    anchor_scores: Tensor,
    first_stage_matched: Tensor,
    num_anchors_per_level: Sequence[int],
    num_gts: int | Sequence[int],
    *,
    topk: int = 9,
    variant: PAAVariant | str = PAAVariant.original,
    details: bool = False,
) -> Tensor | PAAPartition:
    """Steps C–D of PAA (SPEC §3.2): re-assign the first-stage positives, for one image or a batch.

    C. For each GT g and level, the ``min(topk, #)`` anchors with the smallest score among those
       whose first-stage match is g (exact score ties: lower anchor index).
    D. No candidate → g gets nothing; else the GMM (:func:`gmm_fit`) on the ascending-sorted
       scores and the cut of ``variant`` (:func:`_cut`). Everything else is background.
    A batch is served by one candidate selection and one GMM call (GT indices offset per image).

    Args:
        anchor_scores: (A,) or (B, A) anchor scores (lower = better), e.g. :func:`paa_anchor_scores`.
        first_stage_matched: (A,) or (B, A) int64 per-image step-A GT index, negative = not matched.
        num_anchors_per_level: the L anchor counts of one image; num_gts: G, or the B per-image counts.
        variant: a :class:`~assigndet.variants.PAAVariant` or its spelling.
        details: return the intermediates (:class:`PAAPartition`) instead of the matches.
    Returns:
        (A,) or (B, A) int64 per-image GT index of each positive anchor, -1 elsewhere.
    """
    variant = PAAVariant(variant)
    single = anchor_scores.dim() == 1
    scores = anchor_scores.reshape(-1, anchor_scores.shape[-1])  # (A,) or (B, A) -> (B, A)
    counts = [int(num_gts)] if single else list(num_gts)
    matched, offsets = _to_global(first_stage_matched.reshape(scores.shape), counts)  # (B, A), (B, 1)
    flat_scores, flat_matched = scores.reshape(-1), matched.reshape(-1)  # (B, A) -> (N,)
    part = _partition_flat(flat_scores, flat_matched, num_anchors_per_level, sum(counts), topk, variant)
    out = part.matched.view(matched.shape)  # (N,) -> (B, A) global
    out = torch.where(out >= 0, out - offsets, out)  # (B, A) per image
    out = out[0] if single else out
    if not details:
        return out
    A = scores.shape[1]
    local_idx = torch.where(part.candidate_idxs >= 0, part.candidate_idxs % A, -1)  # (G, K) in its image
    return part._replace(matched=out, candidate_idxs=local_idx)


# --- A–D: the assigner ------------------------------------------------------------------------
class PAAAssignment(NamedTuple):
    """Intermediates of :func:`paa_assign` (``details=True``)."""

    matched: Tensor  # (A,) or (B, A) int64 per-image GT index, -1 background
    first_stage_matched: Tensor  # (A,) or (B, A) int64 step-A per-image GT index, -1 unmatched
    anchor_scores: Tensor  # (A,) or (B, A) step-B scores
    partition: PAAPartition  # steps C–D (rows: the GTs of all images, concatenated)


@torch.no_grad()
def paa_assign(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Tensor | Sequence[Tensor],
    gt_labels: Tensor | Sequence[Tensor],
    cls_logits: Tensor,
    box_regression: Tensor,
    *,
    topk: int = 9,
    iou_threshold: float = 0.1,
    offset: float = 1.0,
    variant: PAAVariant | str = PAAVariant.original,
    details: bool = False,
) -> Tensor | PAAAssignment:
    """PAA's assignment (SPEC §3.2, steps A–D), for one image or a batch: A. per image
    :func:`paa_first_stage_match` at ``iou_threshold``; B. one :func:`paa_anchor_scores` for the
    batch, with the step-A labels; C–D. one :func:`paa_partition` for the batch.

    Args:
        anchors: (A, 4) shared by all images, or (B, A, 4); num_anchors_per_level: L counts.
        gt_boxes, gt_labels: one image's (G, 4), (G,) (0-based labels), or B of them.
        cls_logits: (A, C) or (B, A, C) raw; box_regression: (A, 4) or (B, A, 4) coder deltas.
        offset: pixel convention of the step-A IoU and the coder (1 = original).
        variant: ``original``, ``minimal`` (PAA_minimal's cut in D) or ``mmdet`` (mmdetection's port
            in every step: ``MaxIoUAssigner`` in A, GIoU weight 1.3 on the GT box in B, its cut in D).
        details: return the intermediates (:class:`PAAAssignment`).
    Returns:
        (A,) or (B, A) int64 per-image GT index of each positive anchor, -1 background.
    """
    variant = PAAVariant(variant)
    single = isinstance(gt_boxes, Tensor)
    if single:
        gt_boxes, gt_labels = [gt_boxes], [gt_labels]
        cls_logits, box_regression = cls_logits[None], box_regression[None]  # (A, .) -> (1, A, .)
    B, A = cls_logits.shape[:2]
    num_gts = [len(g) for g in gt_boxes]
    anchors_b = anchors.expand(B, A, 4)  # (B, A, 4)
    mm = variant is PAAVariant.mmdet
    rule = Convention.mmdet if mm else Convention.mrcnn
    matched = torch.stack([  # A. (B, A) per image
        paa_first_stage_match(anchors_b[b], gt_boxes[b], iou_threshold=iou_threshold, offset=offset, rule=rule)
        for b in range(B)
    ]) if B else torch.zeros(0, A, dtype=torch.int64, device=cls_logits.device)
    matched_global, _ = _to_global(matched, num_gts)  # (B, A) into the concatenated GTs
    all_boxes = torch.cat(list(gt_boxes)) if B else anchors.new_zeros(0, 4)  # (M, 4)
    all_labels = torch.cat(list(gt_labels)).long() if B else matched.new_zeros(0)  # (M,)
    scores = paa_anchor_scores(  # B.
        anchors_b, cls_logits, box_regression, matched_global, all_boxes, all_labels, offset=offset,
        loc_weight=MMDET_ANCHOR_SCORE_GIOU_WEIGHT if mm else 1.0, encode_targets=not mm,
    )  # (B, A)
    part = paa_partition(scores, matched, num_anchors_per_level, num_gts, topk=topk, variant=variant,
                         details=details)  # C–D.
    if not details:
        return part[0] if single else part
    if single:
        return PAAAssignment(part.matched[0], matched[0], scores[0], part._replace(matched=part.matched[0]))
    return PAAAssignment(part.matched, matched, scores, part)


# --- Aliases of the previous API (one release) ------------------------------------------------
def paa_partition_details(*args, **kwargs) -> PAAPartition:
    """:func:`paa_partition` with ``details=True`` (the name the ``explain`` command uses)."""
    return paa_partition(*args, details=True, **kwargs)


#: :func:`paa_partition` takes batches itself (alias for one release).
paa_partition_batch = paa_partition
#: :func:`paa_assign` takes batches itself (alias for one release).
paa_assign_batch = paa_assign
