"""Probabilistic anchor assignment (PAA, kkhoot/PAA), as pure tensor functions.

Read top to bottom:

* :func:`gmm_fit` — a batched two-component 1-D Gaussian mixture (EM) fitted to many score
  vectors at once, replicating scikit-learn's ``GaussianMixture`` as PAA configures it.
* :func:`paa_partition` — steps C–D of SPEC §3.2: per GT the ≤ ``topk`` lowest-score candidates per
  level, a GMM on their sorted scores, and the cut that makes the prefix positive;
  :func:`paa_partition_details` also returns the intermediates, :func:`paa_partition_batch`
  serves several images with one GMM call.
* :func:`paa_first_stage_match` — step A; :func:`paa_anchor_scores` — step B: focal loss summed
  over classes + (1 − GIoU) per anchor, for one image or a batch.
* :func:`paa_assign` — steps A–D for one image; :func:`paa_assign_batch` for a batch, with one
  score computation and one GMM call for all images.

Everything is vectorised over GTs, levels and images (no Python loop over GTs or anchors), runs
on any device, and costs one host synchronisation per EM iteration plus a few for the dynamic
candidate counts.

Shape letters: B images, A anchors (all levels), L levels, G ground truths, C classes,
K candidates per GT (padded to the largest count, ≤ L·topk), N flattened anchors of a batch,
M GTs of a batch (concatenated).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from assigndet.assign.max_iou import max_iou_match, max_iou_match_mmdet
from assigndet.boxes import BoxCoder, box_iou, giou_loss

__all__ = [
    "GMMFit",
    "PAAPartition",
    "gmm_fit",
    "paa_partition",
    "paa_partition_details",
    "paa_partition_batch",
    "paa_anchor_scores",
    "paa_first_stage_match",
    "paa_assign",
    "paa_assign_batch",
]

#: Loc score of anchors that are not Step-A positives (the reference's ``INF``).
PAA_INF_SCORE = 1e8
#: mmdetection's PAA scores anchors with its configured GIoU loss weight (the original with 1).
MMDET_ANCHOR_SCORE_GIOU_WEIGHT = 1.3
#: Focal-loss hyper-parameters of the anchor score (SPEC §3.2 B).
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
_LOG_2PI = math.log(2.0 * math.pi)
#: GTs processed per block when building the (G, A) IoU matrix (bounds the temporaries).
_IOU_CHUNK = 64


# ---------------------------------------------------------------------------------------------
# Batched 2-component 1-D EM
# ---------------------------------------------------------------------------------------------


class GMMFit(NamedTuple):
    """Result of :func:`gmm_fit` for G score vectors (component 0 = initialised at the minimum)."""

    means: Tensor  # (G, 2) float64
    variances: Tensor  # (G, 2) float64, reg_covar included
    weights: Tensor  # (G, 2) float64
    n_iter: Tensor  # (G,) int64, EM iterations run (sklearn's ``n_iter_``)
    converged: Tensor  # (G,) bool
    components: Tensor  # (G, K) int64, ``predict`` (0 on ties, as argmax); 0 at padded slots
    log_density: Tensor  # (G, K) float64 ``score_samples`` (mixture log-density); 0 at pads


@torch.no_grad()
def gmm_fit(
    x: Tensor,
    mask: Tensor,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
) -> GMMFit:
    """Fit a two-component 1-D Gaussian mixture to each row of ``x`` (G, K), valid where ``mask``.

    Replicates ``sklearn.mixture.GaussianMixture(2, weights_init=[.5, .5],
    means_init=[[min], [max]], precisions_init=[[[1]], [[1]]], tol=tol, reg_covar=reg_covar,
    max_iter=max_iter)`` followed by ``predict`` and ``score_samples`` on the same samples
    (SPEC §3.2 D), for all rows at once. The arithmetic runs in float64 whatever the input dtype
    (SPEC §8 trap 22): a float32 EM loses borderline cuts.

    Algorithm, per row (rows are independent):

    1. Init: weights (.5, .5), means (min, max) of the valid samples, variances (1, 1).
    2. E-step: a_nk = log w_k + log N(x_n; mu_k, var_k); lse_n = logsumexp_k a_nk;
       r_nk = exp(a_nk − lse_n); lower bound = mean_n lse_n (with the parameters *before* the
       M-step, as sklearn).
    3. M-step: n_k = Σ_n r_nk + 10·eps; w_k = n_k / Σ n_k; mu_k = Σ r x / n_k;
       var_k = Σ r (x − mu_k)² / n_k + reg_covar (two-pass, as sklearn).
    4. Stop the row when |lower bound − previous| < tol (the first iteration compares with −inf),
       or after ``max_iter`` iterations; the parameters of that M-step are final. The batch
       iterates until every row has stopped; a row that stopped earlier keeps the parameters of
       its own stopping iteration (read back from the per-iteration history).
    5. ``components`` and ``log_density`` come from one more E-step with the final parameters.

    Rows with fewer than two valid samples (which sklearn refuses) are not fitted: ``n_iter`` 0,
    ``converged`` False, initial parameters; their outputs are finite. At most one host
    synchronisation per EM iteration.

    Per iteration: 3 batched matmuls, 2 fused multiply-adds, log-softmax, exp and a handful of
    (G, 2) operations; lse and the responsibilities share one log-softmax, padded slots are
    neutralised by zeros folded into the matmul operands instead of a masking pass.

    Args:
        x: (G, K) scores, any float dtype; values at padded slots are ignored (may be inf/NaN).
        mask: (G, K) bool, True where a sample is valid.
    Returns:
        :class:`GMMFit`.
    """
    G, K = x.shape
    device = x.device
    dt = torch.float64
    fitted = mask.sum(dim=1) >= 2  # (G,) sklearn needs n_samples >= n_components
    m = mask.to(dt)  # (G, K)
    n = m.sum(dim=1).clamp(min=1.0)  # (G,)
    xv = x.to(dt)
    lo = torch.where(mask, xv, torch.inf).amin(dim=1) if K else xv.new_zeros(G)  # (G,) min
    hi = torch.where(mask, xv, -torch.inf).amax(dim=1) if K else xv.new_zeros(G)  # (G,) max
    lo = torch.where(torch.isfinite(lo), lo, 0.0)
    hi = torch.where(torch.isfinite(hi), hi, 0.0)
    xv = torch.where(mask, xv, 0.0)  # (G, K) padded slots hold 0, never inf/NaN
    x3 = xv[:, None, :]  # (G, 1, K)
    m3 = m[:, None, :]  # (G, 1, K)
    # With pads at 0: one bmm of r with [x·m, m] gives (Σ r x, Σ r) over the valid samples,
    # a bmm with m/n gives masked means, and diff = m·(x − mu) is 0 at pads.
    xm1 = torch.stack((xv, m), dim=2)  # (G, K, 2)
    mean_w = (m / n[:, None])[:, :, None]  # (G, K, 1)
    reg = torch.full((G, 2, 1), reg_covar, dtype=dt, device=device)
    eps10 = 10.0 * torch.finfo(dt).eps

    # 1. init
    mu0 = torch.stack((lo, hi), dim=1)[:, :, None]  # (G, 2, 1)
    var0 = torch.ones(G, 2, 1, dtype=dt, device=device)
    nk0 = (0.5 * n)[:, None, None].expand(G, 2, 1)  # (G, 2, 1), i.e. weights (.5, .5)
    diff = torch.addcmul(x3, mu0, m3, value=-1.0)  # (G, 2, K) = m·(x − mu)
    d2 = diff * diff  # (G, 2, K)
    # Inside the loop a_k = log n_k − ½ log var_k − ½ d²/var_k: the true weighted log-density
    # plus log Σ_k n_k + ½ log 2π, a per-row constant that changes no responsibility and no
    # lower-bound difference (Σ_k n_k = n + 20·eps at every iteration; n_k = n/2 at the init).
    alpha = torch.log(nk0).contiguous()  # (G, 2, 1) log n_k − ½ log var_k
    var = var0

    hist_lb, hist_mu, hist_var, hist_nk = [], [], [], []
    done = ~fitted  # (G,) rows that have converged at least once (or are not fitted)
    prev_lb = torch.full((G,), -torch.inf, dtype=dt, device=device)
    for _ in range(max_iter if bool(fitted.any()) else 0):
        # 2. E-step with the current parameters
        a = torch.addcdiv(alpha, d2, var, value=-0.5)  # (G, 2, K)
        log_r = torch.log_softmax(a, dim=1)  # (G, 2, K)
        r = log_r.exp()  # (G, 2, K) responsibilities (pads meet zeros in xm1, d2, mean_w)
        lse = a[:, 0] - log_r[:, 0]  # (G, K) logsumexp_k a_k
        lb = torch.bmm(lse[:, None, :], mean_w).view(G)  # (G,) mean log-likelihood (− const)
        # 3. M-step
        s = torch.bmm(r, xm1)  # (G, 2, 2): Σ r x, Σ r over valid samples
        nk = s[:, :, 1:] + eps10  # (G, 2, 1)
        mu = s[:, :, :1] / nk  # (G, 2, 1)
        diff = torch.addcmul(x3, mu, m3, value=-1.0)  # (G, 2, K) m·(x − mu)
        d2 = diff * diff  # (G, 2, K)
        ssd = torch.bmm(r.view(G * 2, 1, K), d2.view(G * 2, K, 1)).view(G, 2, 1)  # Σ r d²
        var = torch.addcdiv(reg, ssd, nk)  # (G, 2, 1) two-pass variance + reg_covar
        alpha = torch.log(nk * var.rsqrt())  # (G, 2, 1) log n_k − ½ log var_k
        hist_lb.append(lb)
        hist_mu.append(mu)
        hist_var.append(var)
        hist_nk.append(nk)
        # 4. convergence: |Δ lower bound| < tol (against −inf at the first iteration)
        done |= (lb - prev_lb).abs() < tol
        prev_lb = lb
        if bool(done.all()):  # the one host sync per iteration
            break

    # 4'. per row: the first converged iteration and its M-step parameters
    T = len(hist_lb)
    if T:
        lbs = torch.stack(hist_lb)  # (T, G)
        prev = torch.cat((torch.full_like(lbs[:1], -torch.inf), lbs[:-1]))  # (T, G)
        hit = (lbs - prev).abs() < tol  # (T, G)
        conv_any = hit.any(dim=0) & fitted  # (G,)
        first_hit = torch.where(hit, torch.arange(T, device=device)[:, None], T).amin(dim=0)
        n_iter = torch.where(conv_any, first_hit + 1, T if T == max_iter else first_hit + 1)
        n_iter = torch.where(fitted, n_iter, 0)  # (G,)
        pick = (n_iter - 1).clamp(min=0)[None, :, None, None].expand(1, G, 2, 1)
        mu = torch.stack(hist_mu).gather(0, pick)[0]  # (G, 2, 1)
        var = torch.stack(hist_var).gather(0, pick)[0]
        nk = torch.stack(hist_nk).gather(0, pick)[0]
        keep = fitted[:, None, None]
        mu = torch.where(keep, mu, mu0)
        var = torch.where(keep, var, var0)
        nk = torch.where(keep, nk, nk0)
        converged = conv_any
    else:
        n_iter = torch.zeros(G, dtype=torch.int64, device=device)
        converged = torch.zeros(G, dtype=torch.bool, device=device)
        mu, var, nk = mu0, var0, nk0
    weights = nk / nk.sum(dim=1, keepdim=True)  # (G, 2, 1)

    # 5. predict / score_samples with the final parameters
    pc = var.rsqrt()  # (G, 2, 1)
    y = torch.addcmul(-mu * pc, x3, pc)  # (G, 2, K) = (x − mu)·pc
    a = torch.addcmul(weights.log() + pc.log() - 0.5 * _LOG_2PI, y, y, value=-0.5)  # (G, 2, K)
    log_density = torch.logaddexp(a[:, 0], a[:, 1]) * m  # (G, K)
    components = ((a[:, 1] > a[:, 0]) & mask).to(torch.int64)  # (G, K)
    return GMMFit(
        means=mu[:, :, 0],
        variances=var[:, :, 0],
        weights=weights[:, :, 0],
        n_iter=n_iter,
        converged=converged,
        components=components,
        log_density=log_density,
    )


# ---------------------------------------------------------------------------------------------
# Steps C–D: candidates per GT and level, GMM, cut
# ---------------------------------------------------------------------------------------------


class PAAPartition(NamedTuple):
    """Intermediates of :func:`paa_partition_details` (for inspection / visualisation).

    Candidates of a GT are listed in ascending score order (ties: lower anchor index first), not
    level by level; ``fit`` is the GMM over those rows (rows with < 2 candidates are not fitted:
    ``n_iter`` 0, initial parameters).
    """

    matched: Tensor  # (A,) int64 GT index or -1 (what paa_partition returns)
    candidate_idxs: Tensor  # (G, K) int64 anchor indices, -1 padded
    candidate_scores: Tensor  # (G, K) scores sorted ascending, +inf padded (input dtype)
    num_candidates: Tensor  # (G,) int64
    fit: GMMFit  # over the (G, K) rows
    cut: Tensor  # (G,) int64 last positive position in the sorted list, -1 if none
    is_positive: Tensor  # (G, K) bool


def _level_of(local_idx: Tensor, num_anchors_per_level: Sequence[int]) -> Tensor:
    """Pyramid level (L,) of anchors given their index inside one image (P,) -> (P,)."""
    ends = torch.tensor(list(num_anchors_per_level), device=local_idx.device).cumsum(0)  # (L,)
    return torch.bucketize(local_idx, ends, right=True)


def _sortable_int(x: Tensor) -> Tensor:
    """Integers with the same order as the floats ``x`` (IEEE bits, negatives flipped)."""
    if x.dtype == torch.float64:
        bits, flip = x.view(torch.int64), 0x7FFFFFFFFFFFFFFF
    else:
        bits, flip = x.float().view(torch.int32), 0x7FFFFFFF
    return torch.where(bits < 0, bits ^ flip, bits)


def _first_position(sorted_keys: Tensor) -> Tensor:
    """For a sorted 1-D tensor, the position of each element within its run of equal keys."""
    return torch.arange(sorted_keys.numel(), device=sorted_keys.device) - torch.searchsorted(
        sorted_keys, sorted_keys
    )


def _select_candidates(
    scores: Tensor,
    matched: Tensor,
    num_anchors_per_level: Sequence[int],
    num_gts: int,
    topk: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Step C on flattened anchors: per GT and level the ≤ topk lowest scores among its matches.

    Args:
        scores: (N,) anchor scores, N = B·A (images concatenated).
        matched: (N,) int64 first-stage GT index (global over the batch), < 0 = not a candidate.
    Returns:
        cand_idx (G, K) int64 (-1 padded), cand_scores (G, K) ascending (+inf padded),
        count (G,) int64; K = max count (≥ 1).
    """
    device = scores.device
    L = len(num_anchors_per_level)
    A = int(sum(num_anchors_per_level))
    idx = torch.nonzero(matched >= 0).squeeze(1)  # (P,) ascending anchor index
    s = scores[idx]  # (P,)
    g = matched[idx]  # (P,)
    local = idx % A if scores.numel() != A else idx  # (P,) index inside its image
    group = g * L + _level_of(local, num_anchors_per_level)  # (P,) (gt, level) id
    # Cheap pre-filter (large inputs sort slowly): split each group into topk subsets by anchor
    # index; the max of the subset minima is ≥ the group's topk-th smallest score, so keeping
    # the scores ≤ it keeps every candidate (ties included) and drops most of the rest.
    bucket = group * topk + idx % topk  # (P,)
    mins = torch.full((num_gts * L * topk,), torch.inf, dtype=s.dtype, device=device)
    mins.scatter_reduce_(0, bucket, s, "amin")  # (G·L·topk,) subset minima (inf if empty)
    bound = mins.view(num_gts * L, topk).amax(dim=1)  # (G·L,)
    pre = torch.nonzero(s <= bound[group]).squeeze(1)  # (P',)
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
    cand_idx = torch.full((num_gts, K), -1, dtype=torch.int64, device=device)
    cand_idx[cg, slot] = idx[sel]
    cand_scores = torch.full((num_gts, K), torch.inf, dtype=scores.dtype, device=device)
    cand_scores[cg, slot] = s[sel]
    return cand_idx, cand_scores, count


def _partition(
    scores: Tensor,
    matched: Tensor,
    num_anchors_per_level: Sequence[int],
    num_gts: int,
    topk: int,
    variant: str,
) -> PAAPartition:
    if variant not in ("original", "mmdet", "minimal"):
        raise ValueError(f"variant must be 'original', 'mmdet' or 'minimal', got {variant!r}")
    N = scores.numel()
    device = scores.device
    # C. candidates
    cand_idx, cand_scores, count = _select_candidates(
        scores, matched, num_anchors_per_level, num_gts, topk
    )
    G, K = cand_idx.shape
    pos_k = torch.arange(K, device=device)  # (K,)
    valid = pos_k < count[:, None]  # (G, K)
    # D. GMM on the ascending scores (rows with < 2 candidates are not fitted)
    fit = gmm_fit(cand_scores, valid)
    fg = (fit.components == 0) & valid  # (G, K) component 0 = foreground by index
    has_fg = fg.any(dim=1)  # (G,)
    fg_density = torch.where(fg, fit.log_density, -torch.inf)  # (G, K)
    best = fg & (fg_density == fg_density.amax(dim=1, keepdim=True))  # (G, K)
    j = torch.where(best, pos_k, K).amin(dim=1)  # (G,) first position of the max fg density
    if variant == "minimal":
        # PAA_minimal's cut bug (SPEC §3.7): the index of the max *within the fg subset* is used
        # as the cut position in the full sorted list; otherwise as the original
        j_sub = torch.where(best, fg.cumsum(dim=1) - 1, K).amin(dim=1)  # (G,)
        cut = torch.where(has_fg & (count >= 2), j_sub, count - 1)
        is_pos = pos_k <= cut[:, None]
    elif variant == "original":
        # 1 candidate → positive; no fg → all positive; else prefix 0..j
        cut = torch.where(has_fg & (count >= 2), j, count - 1)  # (G,)
        is_pos = pos_k <= cut[:, None]  # (G, K)
    else:
        # mmdetection: < 2 candidates → none; the fg samples among positions 0..j; no fg → none
        cut = torch.where(has_fg & (count >= 2), j, -1)
        is_pos = fg & (pos_k <= cut[:, None]) & (count[:, None] >= 2)
    is_pos &= valid
    # scatter GT indices to the positive anchors; other slots go to a dummy entry N
    target = torch.where(is_pos, cand_idx, N).view(-1)  # (G·K,)
    gt_ids = torch.arange(G, device=device)[:, None].expand(G, K).reshape(-1)  # (G·K,)
    out = torch.full((N + 1,), -1, dtype=torch.int64, device=device)
    out.scatter_(0, target, gt_ids)
    return PAAPartition(
        matched=out[:N],
        candidate_idxs=cand_idx,
        candidate_scores=cand_scores,
        num_candidates=count,
        fit=fit,
        cut=cut,
        is_positive=is_pos,
    )


@torch.no_grad()
def paa_partition(
    anchor_scores: Tensor,
    first_stage_matched: Tensor,
    num_anchors_per_level: Sequence[int],
    num_gts: int,
    *,
    topk: int = 9,
    variant: str = "original",
) -> Tensor:
    """Steps C–D of PAA (SPEC §3.2): re-assign the first-stage positives of one image.

    1. Candidates: for each GT g and level, the ``min(topk, #)`` anchors with the smallest
       score among those whose first-stage match is g (exact score ties: lower anchor index).
    2. No candidate → g gets nothing; exactly one → it is positive (``"mmdet"``: nothing).
    3. Otherwise fit the two-component GMM (:func:`gmm_fit`) on the ascending-sorted scores;
       component 0 (initialised at the minimum) is foreground by index. Let j = the smallest
       sorted position of a component-0 sample attaining the maximum mixture log-density among
       component-0 samples. ``"original"``: positions 0..j are positive (component-1 samples
       before j included); no component-0 sample → all candidates positive. ``"mmdet"``
       (mmdetection's ``paa_reassign``): only the component-0 samples at positions 0..j; no
       component-0 sample → nothing. ``"minimal"`` (PAA_minimal): as ``"original"`` but the cut
       is the index of that sample *within the component-0 subset*, applied to the full list.
    4. Everything else is background.

    Args:
        anchor_scores: (A,) anchor scores (lower = better), e.g. :func:`paa_anchor_scores`.
        first_stage_matched: (A,) int64 step-A GT index, negative = not matched.
        num_anchors_per_level: L anchor counts, in the anchors' order.
        num_gts: G.
    Returns:
        (A,) int64: GT index of each positive anchor, -1 elsewhere.
    """
    return _partition(
        anchor_scores, first_stage_matched, num_anchors_per_level, num_gts, topk, variant
    ).matched


@torch.no_grad()
def paa_partition_details(
    anchor_scores: Tensor,
    first_stage_matched: Tensor,
    num_anchors_per_level: Sequence[int],
    num_gts: int,
    *,
    topk: int = 9,
    variant: str = "original",
) -> PAAPartition:
    """:func:`paa_partition` returning its intermediates (:class:`PAAPartition`)."""
    return _partition(
        anchor_scores, first_stage_matched, num_anchors_per_level, num_gts, topk, variant
    )


def _to_global(matched: Tensor, num_gts: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Per-image GT indices (B, A) -> indices into the concatenated GTs, and the offsets (B, 1)."""
    starts = [sum(num_gts[:b]) for b in range(len(num_gts))]
    offsets = torch.tensor(starts, dtype=torch.int64, device=matched.device)[:, None]  # (B, 1)
    return torch.where(matched >= 0, matched + offsets, matched), offsets


@torch.no_grad()
def paa_partition_batch(
    anchor_scores: Tensor,
    first_stage_matched: Tensor,
    num_anchors_per_level: Sequence[int],
    num_gts: Sequence[int],
    *,
    topk: int = 9,
    variant: str = "original",
) -> Tensor:
    """:func:`paa_partition` for B images with one candidate selection and one GMM call (the GT
    indices are offset per image so that the GTs of all images form one batch of rows).

    Args:
        anchor_scores: (B, A) scores.
        first_stage_matched: (B, A) int64 per-image step-A GT index, negative = not matched.
        num_anchors_per_level: the L anchor counts of one image (A = their sum).
        num_gts: the B per-image GT counts.
    Returns:
        (B, A) int64 per-image GT index, -1 background.
    """
    matched, offsets = _to_global(first_stage_matched, num_gts)  # (B, A), (B, 1)
    out = _partition(
        anchor_scores.reshape(-1), matched.reshape(-1), num_anchors_per_level, sum(num_gts),
        topk, variant,
    ).matched.view(matched.shape)  # (B, A) global
    return torch.where(out >= 0, out - offsets, out)


# ---------------------------------------------------------------------------------------------
# Step B: anchor scores; steps A–D: the assigner
# ---------------------------------------------------------------------------------------------


def _focal_loss_sum_over_classes(logits: Tensor, labels: Tensor) -> Tensor:
    """Sigmoid focal loss (α 0.25, γ 2) of logits (N, C), summed over classes -> (N,).

    ``labels`` (N,) int64: class c ≥ 0 → positive term for channel c and negative terms for the
    others; -1 → background (negative terms only); ≤ -2 → ignore (0). Uses −log p = softplus(−z)
    and −log(1 − p) = softplus(z) (the stable form of the reference CUDA kernel).
    """
    p = torch.sigmoid(logits)  # (N, C)
    neg = p.square_().mul_(F.softplus(logits)).sum(dim=1) * (1 - FOCAL_ALPHA)  # (N,)
    is_pos = labels >= 0
    y = labels.clamp(min=0)[:, None]  # (N, 1)
    z = logits.gather(1, y).squeeze(1)  # (N,) logit of the GT class
    pz = torch.sigmoid(z)
    pos_term = FOCAL_ALPHA * (1 - pz).pow(FOCAL_GAMMA) * F.softplus(-z)
    neg_term = (1 - FOCAL_ALPHA) * pz.pow(FOCAL_GAMMA) * F.softplus(z)
    out = neg + torch.where(is_pos, pos_term - neg_term, torch.zeros_like(neg))
    return torch.where(labels >= -1, out, torch.zeros_like(out))


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
    """Step B of PAA (SPEC §3.2, trap 10): the score of every anchor (lower = better).

    score = Σ_c focal(cls_logits, step-A label) + (1 − GIoU(decoded prediction, decoded step-A
    target)) for step-A positives, + 1e8 for the others. The step-A label of an anchor is the
    class of its matched GT (background when unmatched). The target goes through the coder
    (decode(encode(gt))) as in the reference; GIoU has no +1; weight 1. mmdetection's port
    (SPEC §6): ``loc_weight=1.3`` (its configured GIoU weight) and ``encode_targets=False`` (the GT
    box itself, ``reg_decoded_bbox``).

    Works for one image or a whole batch: leading dimensions are flattened.

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
    logits = cls_logits.reshape(-1, C)  # (N, C)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    deltas = box_regression.reshape(-1, 4)  # (N, 4)
    anchors = anchors.expand(*box_regression.shape[:-1], 4).reshape(-1, 4)  # (N, 4)
    matched = matched_gt.reshape(-1)  # (N,)
    if gt_labels.numel():
        labels = torch.where(matched >= 0, gt_labels[matched.clamp(min=0)].long(), matched)  # (N,)
    else:
        labels = matched
    cls = _focal_loss_sum_over_classes(logits, labels)  # (N,)
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
    return (cls + loc).view(shape)


@torch.no_grad()
def paa_first_stage_match(
    anchors: Tensor,
    gt_boxes: Tensor,
    *,
    iou_threshold: float = 0.1,
    offset: float = 1.0,
    rule: str = "mrcnn",
) -> Tensor:
    """Step A of PAA: IoU match at ``iou_threshold`` (high = low, no ignore band) -> (A,) int64,
    -1 unmatched. ``rule="mrcnn"``: maskrcnn-benchmark's low-quality rescue (to the anchor's own
    argmax GT); ``"mmdet"``: mmdetection's ``MaxIoUAssigner(min_pos_iou=0, gt_max_assign_all=True)``
    (the best anchors of a GT go to that GT, later GTs overwriting earlier ones, SPEC §6). The
    (G, A) IoU matrix is built in blocks of GTs to bound the temporaries.
    """
    if rule not in ("mrcnn", "mmdet"):
        raise ValueError(f"rule must be 'mrcnn' or 'mmdet', got {rule!r}")
    if len(gt_boxes) == 0:
        return torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device)
    gt_boxes = gt_boxes.to(anchors.dtype)
    iou = anchors.new_empty(len(gt_boxes), len(anchors))  # (G, A)
    for i in range(0, len(gt_boxes), _IOU_CHUNK):  # blocks of GTs, not a loop per GT
        iou[i : i + _IOU_CHUNK] = box_iou(gt_boxes[i : i + _IOU_CHUNK], anchors, offset=offset)
    if rule == "mmdet":
        return max_iou_match_mmdet(iou, iou_threshold, iou_threshold, min_pos_iou=0.0)
    return max_iou_match(iou, iou_threshold, iou_threshold, allow_low_quality=True)


@torch.no_grad()
def paa_assign(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    cls_logits: Tensor,
    box_regression: Tensor,
    *,
    topk: int = 9,
    iou_threshold: float = 0.1,
    offset: float = 1.0,
    variant: str = "original",
) -> Tensor:
    """PAA's assignment for one image (SPEC §3.2, steps A–D).

    A. IoU match (IoU with ``offset``) at ``iou_threshold`` with maskrcnn-benchmark's low-quality
       rescue to the anchor's own argmax GT (:func:`~assigndet.assign.max_iou.max_iou_match`).
    B. Anchor scores with the step-A labels (:func:`paa_anchor_scores`).
    C–D. Candidates, GMM and cut (:func:`paa_partition`).

    Args:
        anchors: (A, 4); num_anchors_per_level: L counts; gt_boxes (G, 4); gt_labels (G,) 0-based;
        cls_logits (A, C) raw; box_regression (A, 4) coder deltas.
        offset: pixel convention of the step-A IoU and the coder (1 = original).
        variant: ``"original"``, ``"minimal"`` (PAA_minimal: its cut in steps C–D) or ``"mmdet"``
            (mmdetection's port in every step: its ``MaxIoUAssigner`` in step A, GIoU weight 1.3
            on the GT box itself in step B, its cut in steps C–D; SPEC §6).
    Returns:
        (A,) int64 GT index of each positive anchor, -1 background.
    """
    return paa_assign_batch(
        anchors, num_anchors_per_level, [gt_boxes], [gt_labels], cls_logits[None],
        box_regression[None], topk=topk, iou_threshold=iou_threshold, offset=offset,
        variant=variant,
    )[0]


@torch.no_grad()
def paa_assign_batch(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    cls_logits: Tensor,
    box_regression: Tensor,
    *,
    topk: int = 9,
    iou_threshold: float = 0.1,
    offset: float = 1.0,
    variant: str = "original",
) -> Tensor:
    """:func:`paa_assign` for B images: step A per image, then one score computation and one
    candidate selection + GMM call over the whole batch (GT indices offset per image).

    Args:
        anchors: (A, 4) shared by all images, or (B, A, 4).
        gt_boxes, gt_labels: B tensors (G_b, 4), (G_b,) (0-based labels).
        cls_logits: (B, A, C); box_regression: (B, A, 4).
    Returns:
        (B, A) int64 per-image GT index, -1 background.
    """
    B, A = cls_logits.shape[:2]
    device = cls_logits.device
    num_gts = [len(g) for g in gt_boxes]
    anchors_b = anchors.expand(B, A, 4)  # (B, A, 4)
    # A. per image
    matched = torch.zeros(B, A, dtype=torch.int64, device=device)  # (B, A) per-image indices
    for b in range(B):
        matched[b] = paa_first_stage_match(
            anchors_b[b], gt_boxes[b], iou_threshold=iou_threshold, offset=offset,
            rule="mmdet" if variant == "mmdet" else "mrcnn",
        )
    # B. the whole batch at once, GT indices into the concatenated GTs
    matched_global, _ = _to_global(matched, num_gts)  # (B, A)
    all_boxes = torch.cat(list(gt_boxes)) if B else anchors.new_zeros(0, 4)  # (M, 4)
    all_labels = torch.cat(list(gt_labels)).long() if B else matched.new_zeros(0)  # (M,)
    mm = variant == "mmdet"
    scores = paa_anchor_scores(
        anchors_b, cls_logits, box_regression, matched_global, all_boxes, all_labels, offset=offset,
        loc_weight=MMDET_ANCHOR_SCORE_GIOU_WEIGHT if mm else 1.0, encode_targets=not mm,
    )  # (B, A)
    # C–D. one candidate selection and one GMM call for the batch
    return paa_partition_batch(
        scores, matched, num_anchors_per_level, num_gts, topk=topk, variant=variant
    )
