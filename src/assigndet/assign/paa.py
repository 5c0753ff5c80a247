"""Probabilistic anchor assignment (PAA, kkhoot/PAA), as pure tensor functions.

Read top to bottom:

* :func:`gmm_fit` — a batched two-component 1-D Gaussian mixture (EM) fitted to many score
  vectors at once, replicating scikit-learn's ``GaussianMixture`` as PAA configures it.
* :func:`paa_partition` — steps C–D of SPEC §3.2: per GT the ≤ ``topk`` lowest-score candidates per
  level, a GMM on their sorted scores, and the cut that makes the prefix positive.
* :func:`paa_anchor_scores` — step B: focal loss summed over classes + (1 − GIoU) per anchor.
* :func:`paa_assign` — steps A–D for one image; :func:`paa_assign_batch` for a batch, with one
  score computation and one GMM call for all images.

Everything is vectorised over GTs, levels and images (no Python loop over GTs or anchors), runs
on any device, and costs at most one host synchronisation per EM iteration plus a few for the
dynamic candidate counts.

Shape letters: B images, A anchors (all levels), L levels, G ground truths, C classes,
K candidates per GT (padded to L·topk), N flattened anchors of a batch.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from assigndet.assign.max_iou import max_iou_match
from assigndet.boxes import BoxCoder, box_iou, giou_loss

__all__ = [
    "GMMFit",
    "PAAPartition",
    "gmm_fit",
    "paa_partition",
    "paa_partition_details",
    "paa_partition_flat",
    "paa_anchor_scores",
    "paa_assign",
    "paa_assign_batch",
]

#: Loc score of anchors that are not Step-A positives (the reference's ``INF``).
PAA_INF_SCORE = 1e8
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
    log_density: Tensor  # (G, K) float64, ``score_samples`` (mixture log-density); 0 at padded slots


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

    Algorithm, per row (rows are independent; a converged row freezes while the others go on):

    1. Init: weights (.5, .5), means (min, max) of the valid samples, variances (1, 1).
    2. E-step: a_nk = log w_k + log N(x_n; mu_k, var_k); lse_n = logsumexp_k a_nk;
       r_nk = exp(a_nk − lse_n); lower bound = mean_n lse_n (with the parameters *before* the
       M-step, as sklearn).
    3. M-step: n_k = Σ_n r_nk + 10·eps; w_k = n_k / Σ n_k; mu_k = Σ r x / n_k;
       var_k = Σ r (x − mu_k)² / n_k + reg_covar (two-pass, as sklearn).
    4. Stop the row when |lower bound − previous| < tol (the first iteration compares with −inf),
       or after ``max_iter`` iterations; the parameters of that M-step are final.
    5. ``components`` and ``log_density`` come from one more E-step with the final parameters.

    Rows with fewer than two valid samples are fitted too (no NaN), but sklearn would refuse
    them; callers ignore those rows. At most one host synchronisation per EM iteration.

    Args:
        x: (G, K) scores, any float dtype; values at padded slots are ignored (may be inf).
        mask: (G, K) bool, True where a sample is valid.
    """
    G, K = x.shape
    device = x.device
    dt = torch.float64
    eps10 = 10.0 * torch.finfo(dt).eps
    m = mask.to(dt)  # (G, K)
    n = m.sum(dim=1).clamp(min=1.0)  # (G,)
    # Padded slots get a finite value (the row's first valid one) so that no inf/NaN appears;
    # their responsibilities are zeroed below.
    xv = x.to(dt)
    first = torch.where(mask, xv, torch.inf).amin(dim=1)  # (G,) = min of the valid samples
    last = torch.where(mask, xv, -torch.inf).amax(dim=1)  # (G,) = max of the valid samples
    first = torch.where(torch.isfinite(first), first, torch.zeros_like(first))
    last = torch.where(torch.isfinite(last), last, torch.zeros_like(last))
    xv = torch.where(mask, xv, first[:, None])  # (G, K)
    x3 = xv[:, None, :]  # (G, 1, K)
    m3 = m[:, None, :]  # (G, 1, K)
    # [x, 1] per sample with padded rows zeroed: one bmm gives (Σ r x, Σ r) for both components.
    xm1 = torch.stack((xv * m, m), dim=2)  # (G, K, 2)
    mean_w = (m / n[:, None])[:, :, None]  # (G, K, 1): masked mean as a bmm

    # 1. init (running parameters; every row keeps iterating, recorded ones freeze)
    mu = torch.stack((first, last), dim=1)[:, :, None]  # (G, 2, 1)
    var = torch.ones(G, 2, 1, dtype=dt, device=device)
    logw = torch.full((G, 2, 1), math.log(0.5), dtype=dt, device=device)
    rec = torch.cat((mu, var, logw), dim=2)  # (G, 2, 3) recorded (mu, var, log w)
    n_iter = torch.zeros(G, dtype=torch.int64, device=device)
    converged = torch.zeros(G, dtype=torch.bool, device=device)
    active = torch.ones(G, dtype=torch.bool, device=device)
    prev_lb = torch.full((G,), -torch.inf, dtype=dt, device=device)

    for _ in range(max_iter):
        # 2. E-step with the running parameters
        pc = var.rsqrt()  # (G, 2, 1) precision Cholesky factor
        alpha = logw + pc.log() - 0.5 * _LOG_2PI  # (G, 2, 1)
        y = torch.addcmul(-mu * pc, x3, pc)  # (G, 2, K) = (x − mu)·pc
        a = torch.addcmul(alpha, y, y, value=-0.5)  # (G, 2, K) weighted log-probabilities
        lse = torch.logaddexp(a[:, 0], a[:, 1])  # (G, K)
        r = torch.exp(a - lse[:, None, :]) * m3  # (G, 2, K) responsibilities, padded = 0
        lb = torch.bmm(lse[:, None, :], mean_w).view(G)  # (G,) mean log-likelihood
        # 3. M-step
        s = torch.bmm(r, xm1)  # (G, 2, 2): Σ r x, Σ r
        nk = s[:, :, 1:] + eps10  # (G, 2, 1)
        mu = s[:, :, :1] / nk  # (G, 2, 1)
        diff = x3 - mu  # (G, 2, K)
        var = torch.linalg.vecdot(r * diff, diff)[:, :, None] / nk + reg_covar  # (G, 2, 1)
        logw = nk.log() - nk.sum(dim=1, keepdim=True).log()  # (G, 2, 1)
        # 4. record the rows still running, then test convergence
        rec = torch.where(active[:, None, None], torch.cat((mu, var, logw), dim=2), rec)
        n_iter += active
        done = active & ((lb - prev_lb).abs() < tol)
        converged |= done
        active &= ~done
        prev_lb = lb
        if not bool(active.any()):  # the one host sync per iteration
            break

    # 5. predict / score_samples with the recorded parameters
    mu, var, logw = rec[:, :, 0:1], rec[:, :, 1:2], rec[:, :, 2:3]  # (G, 2, 1) each
    pc = var.rsqrt()
    y = torch.addcmul(-mu * pc, x3, pc)  # (G, 2, K)
    a = torch.addcmul(logw + pc.log() - 0.5 * _LOG_2PI, y, y, value=-0.5)  # (G, 2, K)
    log_density = torch.logaddexp(a[:, 0], a[:, 1]) * m  # (G, K)
    components = ((a[:, 1] > a[:, 0]) & mask).to(torch.int64)  # (G, K)
    return GMMFit(
        means=rec[:, :, 0],
        variances=rec[:, :, 1],
        weights=rec[:, :, 2].exp(),
        n_iter=n_iter,
        converged=converged,
        components=components,
        log_density=log_density,
    )
