"""A batched two-component 1-D Gaussian mixture (EM), fitted to many score vectors at once.

:func:`gmm_fit` replicates scikit-learn's ``GaussianMixture`` as PAA configures it (SPEC §3.2 D)
for G rows at once, in float64 whatever the input dtype (SPEC §8 trap 22: a float32 EM loses
borderline cuts). Read top to bottom: the prepared operands, the init, one EM iteration, the loop,
the per-row stopping iteration, the final ``predict`` / ``score_samples``.

Shape letters: G rows (score vectors), K samples per row (padded), T EM iterations run.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["GMMFit", "gmm_fit"]

_LOG_2PI = math.log(2.0 * math.pi)


class GMMFit(NamedTuple):
    """Result of :func:`gmm_fit` for G score vectors (component 0 = initialised at the minimum)."""

    means: Tensor  # (G, 2) float64
    variances: Tensor  # (G, 2) float64, reg_covar included
    weights: Tensor  # (G, 2) float64
    n_iter: Tensor  # (G,) int64, EM iterations run (sklearn's ``n_iter_``)
    converged: Tensor  # (G,) bool
    components: Tensor  # (G, K) int64, ``predict`` (0 on ties, as argmax); 0 at padded slots
    log_density: Tensor  # (G, K) float64 ``score_samples`` (mixture log-density); 0 at pads


class _Samples(NamedTuple):
    """The float64 operands of the EM, prepared once. Pads hold 0 (never inf/NaN), so one bmm of
    r with ``xm1`` gives (Σ r x, Σ r) over the valid samples, a bmm with ``mean_w`` gives masked
    means, and ``m·(x − mu)`` is 0 at pads."""

    fitted: Tensor  # (G,) bool, >= 2 valid samples (sklearn needs n_samples >= n_components)
    m: Tensor  # (G, K) float64 mask
    n: Tensor  # (G,) valid samples, >= 1
    x3: Tensor  # (G, 1, K) samples, 0 at pads
    m3: Tensor  # (G, 1, K) mask
    xm1: Tensor  # (G, K, 2) [x·m, m]
    mean_w: Tensor  # (G, K, 1) m / n
    reg: Tensor  # (G, 2, 1) reg_covar
    lo: Tensor  # (G,) min of the valid samples (0 when none)
    hi: Tensor  # (G,) max of the valid samples (0 when none)


class _Params(NamedTuple):
    """Per-row mixture parameters as (G, 2, 1) columns; n_k = weight_k · Σ_k n_k."""

    mu: Tensor
    var: Tensor
    nk: Tensor


def _prepare(x: Tensor, mask: Tensor, reg_covar: float) -> _Samples:
    G, K = x.shape
    dt = torch.float64
    m = mask.to(dt)  # (G, K)
    n = m.sum(dim=1).clamp(min=1.0)  # (G,)
    xv = x.to(dt)
    lo = torch.where(mask, xv, torch.inf).amin(dim=1) if K else xv.new_zeros(G)  # (G,) min
    hi = torch.where(mask, xv, -torch.inf).amax(dim=1) if K else xv.new_zeros(G)  # (G,) max
    lo = torch.where(torch.isfinite(lo), lo, 0.0)
    hi = torch.where(torch.isfinite(hi), hi, 0.0)
    xv = torch.where(mask, xv, 0.0)  # (G, K) padded slots hold 0
    return _Samples(
        fitted=mask.sum(dim=1) >= 2,
        m=m,
        n=n,
        x3=xv[:, None, :],  # (G, 1, K)
        m3=m[:, None, :],  # (G, 1, K)
        xm1=torch.stack((xv, m), dim=2),  # (G, K, 2)
        mean_w=(m / n[:, None])[:, :, None],  # (G, K, 1)
        reg=torch.full((G, 2, 1), reg_covar, dtype=dt, device=x.device),
        lo=lo,
        hi=hi,
    )


def _init(s: _Samples) -> _Params:
    """1. Weights (.5, .5), means (min, max) of the valid samples, variances (1, 1)."""
    G = s.n.shape[0]
    mu0 = torch.stack((s.lo, s.hi), dim=1)[:, :, None]  # (G, 2, 1)
    var0 = torch.ones(G, 2, 1, dtype=torch.float64, device=s.n.device)
    nk0 = (0.5 * s.n)[:, None, None].expand(G, 2, 1)  # (G, 2, 1), i.e. weights (.5, .5)
    return _Params(mu0, var0, nk0)


def _sq_dist(s: _Samples, mu: Tensor) -> Tensor:
    """(m·(x − mu))² -> (G, 2, K)."""
    diff = torch.addcmul(s.x3, mu, s.m3, value=-1.0)  # (G, 2, K) m·(x − mu)
    return diff * diff


def _em_step(s: _Samples, alpha: Tensor, d2: Tensor, var: Tensor) -> tuple[Tensor, _Params, Tensor, Tensor]:
    """2.-3. One E-step with the current parameters and the M-step.

    ``alpha`` = log n_k − ½ log var_k: with it a_k is the true weighted log-density plus
    log Σ_k n_k + ½ log 2π, a per-row constant that changes no responsibility and no lower-bound
    difference (Σ_k n_k = n + 20·eps at every iteration; n_k = n/2 at the init).
    Returns the lower bound (G,) (before the M-step, as sklearn), the new parameters, and the
    new d² (G, 2, K) and alpha (G, 2, 1).
    """
    G, _, K = d2.shape
    a = torch.addcdiv(alpha, d2, var, value=-0.5)  # (G, 2, K)
    log_r = torch.log_softmax(a, dim=1)  # (G, 2, K)
    r = log_r.exp()  # (G, 2, K) responsibilities (pads meet zeros in xm1, d2, mean_w)
    lse = a[:, 0] - log_r[:, 0]  # (G, K) logsumexp_k a_k
    lb = torch.bmm(lse[:, None, :], s.mean_w).view(G)  # (G,) mean log-likelihood (− const)
    sums = torch.bmm(r, s.xm1)  # (G, 2, 2): Σ r x, Σ r over valid samples
    nk = sums[:, :, 1:] + 10.0 * torch.finfo(torch.float64).eps  # (G, 2, 1)
    mu = sums[:, :, :1] / nk  # (G, 2, 1)
    d2 = _sq_dist(s, mu)  # (G, 2, K)
    ssd = torch.bmm(r.view(G * 2, 1, K), d2.view(G * 2, K, 1)).view(G, 2, 1)  # Σ r d²
    var = torch.addcdiv(s.reg, ssd, nk)  # (G, 2, 1) two-pass variance + reg_covar
    alpha = torch.log(nk * var.rsqrt())  # (G, 2, 1) log n_k − ½ log var_k
    return lb, _Params(mu, var, nk), d2, alpha


def _run_em(s: _Samples, init: _Params, max_iter: int, tol: float) -> tuple[list[Tensor], list[_Params]]:
    """4. Iterate until every row has |Δ lower bound| < tol (against −inf at the first
    iteration) or ``max_iter``; one host sync per iteration. Returns the per-iteration lower
    bounds and parameters."""
    G = s.n.shape[0]
    d2 = _sq_dist(s, init.mu)  # (G, 2, K)
    alpha = torch.log(init.nk).contiguous()  # (G, 2, 1)
    var = init.var
    hist_lb, hist = [], []
    done = ~s.fitted  # (G,) rows that have converged at least once (or are not fitted)
    prev_lb = torch.full((G,), -torch.inf, dtype=torch.float64, device=s.n.device)
    for _ in range(max_iter if bool(s.fitted.any()) else 0):
        lb, params, d2, alpha = _em_step(s, alpha, d2, var)
        var = params.var
        hist_lb.append(lb)
        hist.append(params)
        done |= (lb - prev_lb).abs() < tol
        prev_lb = lb
        if bool(done.all()):  # the one host sync per iteration
            break
    return hist_lb, hist


def _stopping_params(
    s: _Samples, init: _Params, hist_lb: list[Tensor], hist: list[_Params], max_iter: int, tol: float
) -> tuple[Tensor, Tensor, _Params]:
    """4'. Per row the first converged iteration and its M-step parameters (a row that stopped
    before the batch did keeps its own) -> n_iter (G,), converged (G,), parameters."""
    G = s.n.shape[0]
    device = s.n.device
    T = len(hist_lb)
    if not T:
        zeros = torch.zeros(G, dtype=torch.int64, device=device)
        return zeros, torch.zeros(G, dtype=torch.bool, device=device), init
    lbs = torch.stack(hist_lb)  # (T, G)
    prev = torch.cat((torch.full_like(lbs[:1], -torch.inf), lbs[:-1]))  # (T, G)
    hit = (lbs - prev).abs() < tol  # (T, G)
    conv_any = hit.any(dim=0) & s.fitted  # (G,)
    first_hit = torch.where(hit, torch.arange(T, device=device)[:, None], T).amin(dim=0)
    n_iter = torch.where(conv_any, first_hit + 1, T if T == max_iter else first_hit + 1)
    n_iter = torch.where(s.fitted, n_iter, 0)  # (G,)
    pick = (n_iter - 1).clamp(min=0)[None, :, None, None].expand(1, G, 2, 1)
    keep = s.fitted[:, None, None]
    chosen = [
        torch.where(keep, torch.stack([p[i] for p in hist]).gather(0, pick)[0], init[i])  # (G, 2, 1)
        for i in range(3)
    ]
    return n_iter, conv_any, _Params(*chosen)


def _predict(s: _Samples, mask: Tensor, mu: Tensor, var: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """5. ``predict`` and ``score_samples`` with the final parameters -> components (G, K) int64,
    log-density (G, K) float64 (0 at pads)."""
    pc = var.rsqrt()  # (G, 2, 1)
    y = torch.addcmul(-mu * pc, s.x3, pc)  # (G, 2, K) = (x − mu)·pc
    a = torch.addcmul(weights.log() + pc.log() - 0.5 * _LOG_2PI, y, y, value=-0.5)  # (G, 2, K)
    log_density = torch.logaddexp(a[:, 0], a[:, 1]) * s.m  # (G, K)
    components = ((a[:, 1] > a[:, 0]) & mask).to(torch.int64)  # (G, K)
    return components, log_density


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
    max_iter=max_iter)`` followed by ``predict`` and ``score_samples`` on the same samples, for all
    rows at once, in float64. Per row (rows are independent):

    1. Init: weights (.5, .5), means (min, max) of the valid samples, variances (1, 1).
    2. E-step: a_nk = log w_k + log N(x_n; mu_k, var_k); lse_n = logsumexp_k a_nk;
       r_nk = exp(a_nk − lse_n); lower bound = mean_n lse_n (parameters *before* the M-step).
    3. M-step: n_k = Σ_n r_nk + 10·eps; w_k = n_k / Σ n_k; mu_k = Σ r x / n_k;
       var_k = Σ r (x − mu_k)² / n_k + reg_covar (two-pass, as sklearn).
    4. Stop the row when |lower bound − previous| < tol (the first iteration compares with −inf),
       or after ``max_iter`` iterations; the parameters of that M-step are final.
    5. ``components`` and ``log_density`` come from one more E-step with the final parameters.

    Rows with fewer than two valid samples (which sklearn refuses) are not fitted: ``n_iter`` 0,
    ``converged`` False, initial parameters; their outputs are finite. At most one host
    synchronisation per EM iteration.

    Args:
        x: (G, K) scores, any float dtype; values at padded slots are ignored (may be inf/NaN).
        mask: (G, K) bool, True where a sample is valid.
    Returns:
        :class:`GMMFit`.
    """
    s = _prepare(x, mask, reg_covar)
    init = _init(s)
    hist_lb, hist = _run_em(s, init, max_iter, tol)
    n_iter, converged, (mu, var, nk) = _stopping_params(s, init, hist_lb, hist, max_iter, tol)
    weights = nk / nk.sum(dim=1, keepdim=True)  # (G, 2, 1)
    components, log_density = _predict(s, mask, mu, var, weights)
    return GMMFit(
        means=mu[:, :, 0],
        variances=var[:, :, 0],
        weights=weights[:, :, 0],
        n_iter=n_iter,
        converged=converged,
        components=components,
        log_density=log_density,
    )
