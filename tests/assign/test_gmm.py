"""gmm_fit (the batched 2-component 1-D EM) against scikit-learn's GaussianMixture as PAA calls it."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import sklearn.mixture as skm
import torch

from assigndet.assign.gmm import gmm_fit

pytestmark = pytest.mark.usefixtures("one_thread")


def sk_fit(values: np.ndarray):
    """PAA's scikit-learn call on the ascending float32 samples."""
    x = np.sort(values.astype(np.float32)).reshape(-1, 1)
    gmm = skm.GaussianMixture(
        2, weights_init=[0.5, 0.5], means_init=[[x.min()], [x.max()]],
        precisions_init=[[[1.0]], [[1.0]]],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gmm.fit(x)
    return gmm, gmm.predict(x), gmm.score_samples(x), x[:, 0]


def sk_margin(gmm, x: np.ndarray) -> np.ndarray:
    """|a_1 − a_0| per sample from sklearn's fitted parameters (float64)."""
    mu = gmm.means_.ravel().astype(np.float64)
    var = gmm.covariances_.ravel().astype(np.float64)
    a = np.log(gmm.weights_) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (x[:, None] - mu) ** 2 / var
    return np.abs(a[:, 1] - a[:, 0])


def _random_samples(rng, i):
    n = int(rng.integers(2, 46))
    kind = i % 10
    if kind == 0:
        s = rng.normal(0.5, 0.2, n)
    elif kind == 1:
        s = np.concatenate([rng.normal(0.3, 0.05, n // 2), rng.normal(1.5, 0.4, n - n // 2)])
    elif kind == 2:
        s = rng.exponential(1.0, n)
    elif kind == 3:
        s = rng.gamma(2.0, 0.3, n) + rng.uniform(0, 3)
    elif kind == 4:  # many duplicates
        s = np.round(rng.normal(1.0, 0.3, n), 1)
    elif kind == 5:  # spreads from 1e-3 to 1e3
        s = rng.uniform(0, 10 ** rng.uniform(-3, 3), n)
    elif kind == 6:  # two samples
        s = rng.normal(1.0, 0.5, 2)
    elif kind == 7:  # all equal: zero variance
        s = np.full(n, rng.uniform(0, 3))
    elif kind == 8:  # huge spread with an outlier
        s = np.concatenate([rng.normal(0.5, 0.1, n - 1), [rng.uniform(1e3, 1e5)]])
    else:  # a few values repeated
        s = rng.choice(rng.uniform(0, 2, 3), n)
    return np.abs(s).astype(np.float32)


def test_gmm_fit_matches_sklearn_on_random_cases():
    rng = np.random.default_rng(0)
    cases = [_random_samples(rng, i) for i in range(200)]
    K = max(len(c) for c in cases) + 3  # extra padding
    x = torch.full((len(cases), K), float("nan"))  # padded slots must be ignored, even NaN
    mask = torch.zeros(len(cases), K, dtype=torch.bool)
    for i, c in enumerate(cases):
        x[i, : len(c)] = torch.from_numpy(np.sort(c))
        mask[i, : len(c)] = True
    fit = gmm_fit(x, mask)
    for name in ("means", "variances", "weights", "log_density"):
        assert torch.isfinite(getattr(fit, name)).all(), name
    assert (fit.components[~mask] == 0).all()
    for i, c in enumerate(cases):
        gmm, comp, dens, xs = sk_fit(c)
        n = len(c)
        assert fit.n_iter[i].item() == gmm.n_iter_, i
        assert fit.converged[i].item() == gmm.converged_, i
        scale = max(float(np.abs(xs).max()), 1e-30)
        np.testing.assert_allclose(fit.means[i].numpy(), gmm.means_.ravel(), rtol=1e-6, atol=1e-6 * scale)
        np.testing.assert_allclose(fit.variances[i].numpy(), gmm.covariances_.ravel(), rtol=1e-5)
        np.testing.assert_allclose(fit.weights[i].numpy(), gmm.weights_, rtol=1e-5, atol=1e-7)
        # sklearn rounds x·precision_cholesky to float32: its log-density is only that accurate
        # (matters for a component collapsed on a far outlier, x·pc ≈ 1e7)
        e = np.abs(xs.astype(np.float64)) * np.sqrt(1 / gmm.covariances_.min()) * 2.0**-24
        np.testing.assert_array_less(
            np.abs(fit.log_density[i, :n].numpy() - dens), 1e-5 + 1e-6 * np.abs(dens) + 2 * e * (1 + e)
        )
        # components: sklearn stores log-probabilities in float32; where both components are
        # within its rounding noise (identical components) the label is not decidable
        decided = sk_margin(gmm, xs.astype(np.float64)) > 1e-5
        assert (fit.components[i, :n].numpy()[decided] == comp[decided]).all(), i


def test_gmm_fit_rows_that_cannot_be_fitted():
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    fit = gmm_fit(x, mask)
    assert fit.n_iter.tolist()[1:] == [0, 0]
    assert not fit.converged[1:].any()
    assert fit.n_iter[0] > 0 and fit.converged[0]
    for name in ("means", "variances", "weights", "log_density"):
        assert torch.isfinite(getattr(fit, name)).all()
    empty = gmm_fit(torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool))
    assert empty.means.shape == (0, 2) and empty.components.shape == (0, 5)


def test_gmm_fit_max_iter_and_float64():
    rng = np.random.default_rng(1)
    s = np.sort(rng.gamma(2.0, 0.3, 40).astype(np.float32))
    x = torch.from_numpy(s)[None]
    fit = gmm_fit(x, torch.ones_like(x, dtype=torch.bool), max_iter=2)
    gmm = skm.GaussianMixture(
        2, weights_init=[0.5, 0.5], means_init=[[s.min()], [s.max()]],
        precisions_init=[[[1.0]], [[1.0]]], max_iter=2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gmm.fit(s[:, None])
    assert fit.n_iter.item() == 2 and not fit.converged.item() and not gmm.converged_
    np.testing.assert_allclose(fit.means[0].numpy(), gmm.means_.ravel(), rtol=1e-6)
    assert fit.means.dtype == torch.float64
