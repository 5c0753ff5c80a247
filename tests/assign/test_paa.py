"""PAA: batched GMM vs scikit-learn, partition vs the reference loop, fixtures, edge cases."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import load_fixture

from assigndet.assign.max_iou import max_iou_match, max_iou_match_mmdet
from assigndet.assign.paa import (
    gmm_fit,
    paa_anchor_scores,
    paa_assign,
    paa_assign_batch,
    paa_first_stage_match,
    paa_partition,
    paa_partition_details,
    paa_partition_batch,
)
from assigndet.boxes import BoxCoder

skm = pytest.importorskip("sklearn.mixture")

STRIDES = (8, 16, 32, 64, 128)


# small tensors: a second intra-op thread only adds contention on a shared 2-core machine (the
# 500-GT case ran ~5x slower with 2 threads under load)
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# helpers: scikit-learn oracle, reference loop, synthetic images
# ---------------------------------------------------------------------------------------------


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


def reference_partition(scores, matched, counts, num_gts, topk=9, variant="original"):
    """kkhoot/PAA ``compute_paa`` (and mmdetection's ``paa_reassign``): a per-GT sklearn loop."""
    out = torch.full_like(matched, -1)
    starts = np.cumsum([0] + list(counts))
    for gt in range(num_gts):
        cands = []
        for lvl in range(len(counts)):
            s, e = int(starts[lvl]), int(starts[lvl + 1])
            idx = torch.nonzero(matched[s:e] == gt).squeeze(1)
            if idx.numel():
                order = torch.sort(scores[s:e][idx], stable=True).indices[:topk]
                cands.append(idx[order] + s)
        if not cands:
            continue
        cand = torch.cat(cands)
        if cand.numel() == 1:
            if variant == "original":
                out[cand] = gt
            continue
        loss, inds = torch.sort(scores[cand], stable=True)
        _, comp, dens, _ = sk_fit(loss.numpy())
        comp, dens = torch.from_numpy(comp), torch.from_numpy(dens)
        fg = comp == 0
        if fg.any():
            j = int(torch.nonzero(fg & (dens == dens[fg].max())).min())
            if variant == "original":
                out[cand[inds[: j + 1]]] = gt
            else:
                out[cand[inds[: j + 1][fg[: j + 1]]]] = gt
        elif variant == "original":
            out[cand] = gt
    return out


def mrcnn_anchors(image_hw):
    """P3–P7 anchors (one per location, size 8·s, +1 convention, SPEC §1.5) of the padded image."""
    h, w = (-(-image_hw[0] // 32) * 32, -(-image_hw[1] // 32) * 32)
    sizes = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
    for _ in range(2):
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    out, counts = [], []
    for s, (fh, fw) in zip(STRIDES, sizes):
        half = (8 * s - 1) / 2
        cell = torch.tensor([s / 2 - half, s / 2 - half, s / 2 + half, s / 2 + half])
        ys, xs = torch.meshgrid(torch.arange(fh) * s, torch.arange(fw) * s, indexing="ij")
        out.append(cell + torch.stack((xs, ys, xs, ys), dim=-1).reshape(-1, 4).float())
        counts.append(fh * fw)
    return torch.cat(out), counts


def random_gts(g, num, image_hw, min_size=12.0, max_size=300.0):
    H, W = image_hw
    wh = torch.exp(torch.empty(num, 2).uniform_(math.log(min_size), math.log(max_size), generator=g))
    xy = torch.rand(num, 2, generator=g) * (torch.tensor([W, H]) - wh).clamp(min=1)
    return torch.cat((xy, (xy + wh).minimum(torch.tensor([W - 1.0, H - 1.0]))), dim=1)


def random_head(g, anchors, gt, matched, labels, num_classes=5):
    """Head outputs whose scores look like a half-trained detector's."""
    A = len(anchors)
    logits = torch.randn(A, num_classes, generator=g) * 1.5 - 4.0
    pos = matched >= 0
    logits[pos, labels[matched[pos]]] += torch.randn(int(pos.sum()), generator=g) * 2 + 2
    deltas = torch.randn(A, 4, generator=g) * 0.5
    if len(gt):
        target = BoxCoder().encode(gt[matched.clamp(min=0)], anchors)
        deltas[pos] = target[pos] + torch.randn(int(pos.sum()), 4, generator=g) * 0.4
    return logits, deltas


# ---------------------------------------------------------------------------------------------
# gmm_fit vs scikit-learn
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# fixtures of the original implementations
# ---------------------------------------------------------------------------------------------


def _tie_anchor_mask(case, ref_key):
    """Anchors whose label may legitimately differ: candidates of the flagged tie GTs."""
    skip = torch.zeros(len(case["anchors"]), dtype=torch.bool)
    for g in case["gts_with_fg_score_tie"]:
        if case["candidate_idxs"][g] is not None:
            skip[case["candidate_idxs"][g]] = True
    return skip


@pytest.mark.parametrize("variant,key", [("original", "matched_gt"), ("mmdet", "matched_gt_mmdet")])
def test_partition_reproduces_fixtures(variant, key):
    for case in load_fixture("paa_cases.pt"):
        G = len(case["gt_boxes"])
        out = paa_partition(
            case["anchor_scores"], case["iou_based_matched_idx"], case["num_anchors_per_level"], G,
            topk=case["topk"], variant=variant,
        )
        keep = ~_tie_anchor_mask(case, key)
        assert torch.equal(out[keep], case[key][keep]), case["case_id"]


def test_partition_intermediates_reproduce_fixtures():
    for case in load_fixture("paa_cases.pt"):
        G = len(case["gt_boxes"])
        det = paa_partition_details(
            case["anchor_scores"], case["iou_based_matched_idx"], case["num_anchors_per_level"], G
        )
        for g, ref in enumerate(case["candidate_idxs"]):
            n = int(det.num_candidates[g])
            if ref is None:
                assert n == 0
                continue
            assert sorted(det.candidate_idxs[g, :n].tolist()) == sorted(ref.tolist())
            assert (det.candidate_idxs[g, n:] == -1).all()
            expected = torch.sort(case["anchor_scores"][ref]).values
            assert torch.equal(det.candidate_scores[g, :n], expected)
        ties = set(case["gts_with_fg_score_tie"])
        for f in case["gmm_fits"]:
            g, n = f["gt_index"], f["n"]
            assert det.fit.n_iter[g].item() == f["n_iter"]
            assert det.fit.converged[g].item() == f["converged"]
            np.testing.assert_allclose(det.fit.means[g].numpy(), f["means"], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(det.fit.variances[g].numpy(), f["variances"], rtol=1e-5)
            np.testing.assert_allclose(det.fit.weights[g].numpy(), f["weights"], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(
                det.fit.log_density[g, :n].numpy(), f["score_samples"], rtol=1e-6, atol=3e-5
            )
            if g not in ties:
                assert det.fit.components[g, :n].tolist() == f["components"]
        # the cut is a prefix of the ascending order and agrees with the output
        for g in range(G):
            pos = det.candidate_idxs[g][det.is_positive[g]]
            assert det.is_positive[g].sum() == det.cut[g] + 1
            assert (det.matched[pos] == g).all()


def test_first_stage_match_reproduces_fixtures():
    for case in load_fixture("paa_cases.pt"):
        m = paa_first_stage_match(case["anchors"], case["gt_boxes"], iou_threshold=0.1, offset=1.0)
        assert torch.equal(m, case["iou_based_matched_idx"]), case["case_id"]


def test_assign_from_raw_head_outputs_reproduces_fixtures():
    cases = {c["case_id"]: c for c in load_fixture("paa_cases.pt")}
    raws = load_fixture("paa_raw_head_outputs.pt")
    assert raws
    for raw in raws:
        case = cases[raw["case_id"]]
        labels0 = case["gt_labels"] - 1  # fixtures are 1-based
        scores = paa_anchor_scores(
            case["anchors"], raw["cls_logits"], raw["box_regression"],
            case["iou_based_matched_idx"], case["gt_boxes"], labels0,
        )
        ref = case["anchor_scores"]
        finite = ref < 1e7
        torch.testing.assert_close(scores[finite], ref[finite], rtol=1e-6, atol=2e-6)
        assert torch.equal(scores[~finite], ref[~finite])
        out = paa_assign(
            case["anchors"], case["num_anchors_per_level"], case["gt_boxes"], labels0,
            raw["cls_logits"], raw["box_regression"], topk=9, iou_threshold=0.1, offset=1.0,
        )
        assert torch.equal(out, case["matched_gt"])


# ---------------------------------------------------------------------------------------------
# partition vs the reference loop on synthetic images; batching
# ---------------------------------------------------------------------------------------------


def _synthetic_image(seed, num_gts, image_hw=(320, 416)):
    g = torch.Generator().manual_seed(seed)
    anchors, counts = mrcnn_anchors(image_hw)
    gt = random_gts(g, num_gts, image_hw)
    labels = torch.randint(0, 5, (num_gts,), generator=g)
    matched = paa_first_stage_match(anchors, gt)
    logits, deltas = random_head(g, anchors, gt, matched, labels)
    return anchors, counts, gt, labels, matched, logits, deltas


@pytest.mark.parametrize("variant", ["original", "mmdet"])
def test_partition_matches_reference_loop(variant):
    for seed in range(8):
        anchors, counts, gt, labels, matched, logits, deltas = _synthetic_image(seed, 2 + 4 * seed)
        scores = paa_anchor_scores(anchors, logits, deltas, matched, gt, labels)
        ours = paa_partition(scores, matched, counts, len(gt), variant=variant)
        ref = reference_partition(scores, matched, counts, len(gt), variant=variant)
        assert torch.equal(ours, ref), seed


def test_batched_assign_equals_per_image():
    images = [_synthetic_image(seed, n) for seed, n in ((10, 4), (11, 0), (12, 9))]
    anchors, counts = images[0][0], images[0][1]
    out = paa_assign_batch(
        anchors, counts, [im[2] for im in images], [im[3] for im in images],
        torch.stack([im[5] for im in images]), torch.stack([im[6] for im in images]),
    )
    assert out.shape == (3, len(anchors))
    for b, im in enumerate(images):
        single = paa_assign(anchors, counts, im[2], im[3], im[5], im[6])
        assert torch.equal(out[b], single), b
    assert (out[1] == -1).all()

    # paa_anchor_scores batched (global GT indices) == per image; paa_partition_batch
    offs = [0, 4, 4]
    matched = torch.stack([torch.where(im[4] >= 0, im[4] + o, im[4]) for im, o in zip(images, offs)])
    scores = paa_anchor_scores(
        anchors, torch.stack([im[5] for im in images]), torch.stack([im[6] for im in images]),
        matched, torch.cat([im[2] for im in images]), torch.cat([im[3] for im in images]),
    )
    for b, im in enumerate(images):
        single = paa_anchor_scores(anchors, im[5], im[6], im[4], im[2], im[3])
        torch.testing.assert_close(scores[b], single, rtol=1e-6, atol=1e-6)  # summation order
    local = torch.stack([im[4] for im in images])
    part = paa_partition_batch(scores, local, counts, [len(im[2]) for im in images])
    assert torch.equal(part, out)
    for b, im in enumerate(images):
        assert torch.equal(part[b], paa_partition(scores[b], im[4], counts, len(im[2])))


# ---------------------------------------------------------------------------------------------
# step A, step B
# ---------------------------------------------------------------------------------------------


def test_max_iou_match_semantics():
    iou = torch.tensor(
        [
            [0.50, 0.05, 0.00, 0.30, 0.3],
            [0.50, 0.04, 0.20, 0.60, 0.3],
        ]
    )  # (G=2, A=5)
    # anchor 0: tie → GT 0; anchor 1: best 0.05 < 0.1; anchor 4: tie → GT 0
    assert max_iou_match(iou, 0.1, 0.1).tolist() == [0, -1, 1, 1, 0]
    assert max_iou_match(iou, 0.4, 0.1).tolist() == [0, -1, -2, 1, -2]
    # GT 0's best anchors are 0 (IoU .5): rescued to their own argmax (already GT 0)
    assert max_iou_match(iou, 0.1, 0.1, allow_low_quality=True).tolist() == [0, -1, 1, 1, 0]
    # GT 0's best anchor (0) prefers GT 1: it is rescued to GT 1, GT 0 gets nothing
    iou2 = torch.tensor([[0.05, 0.0, 0.01], [0.08, 0.0, 0.0]])
    assert max_iou_match(iou2, 0.1, 0.1).tolist() == [-1, -1, -1]
    assert max_iou_match(iou2, 0.1, 0.1, allow_low_quality=True).tolist() == [1, -1, -1]
    # a GT whose best IoU is 0 rescues every anchor with IoU 0 to it (to their own argmax)
    iou3 = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert max_iou_match(iou3, 0.1, 0.1, allow_low_quality=True).tolist() == [0, 0, 0]
    assert max_iou_match(torch.zeros(0, 3), 0.1, 0.1, True).tolist() == [-1, -1, -1]
    assert max_iou_match(torch.zeros(2, 0), 0.1, 0.1, True).tolist() == []


def _mmdet_assigner_loop(iou, pos_thr, neg_thr, min_pos_iou, gt_max_assign_all):
    """mmdetection's MaxIoUAssigner.assign_wrt_overlaps, transcribed from its documented steps as a
    loop over GTs (1-based inside, as mmdetection): -1 ignore, 0 background, i + 1 GT i."""
    G, A = iou.shape
    assigned = [-1] * A
    for a in range(A):
        col = iou[:, a].tolist()
        best = max(col)
        arg = col.index(best)
        if 0 <= best < neg_thr:
            assigned[a] = 0
        if best >= pos_thr:
            assigned[a] = arg + 1
    for i in range(G):
        row = iou[i].tolist()
        gmax = max(row)
        if gmax >= min_pos_iou:
            if gt_max_assign_all:
                for a in range(A):
                    if row[a] == gmax:
                        assigned[a] = i + 1
            else:
                assigned[row.index(gmax)] = i + 1
    return [{-1: -2, 0: -1}.get(v, v - 1) for v in assigned]


@pytest.mark.parametrize("assign_all", [True, False])
def test_max_iou_match_mmdet_equals_the_assigner_loop(assign_all):
    g = torch.Generator().manual_seed(5)
    for trial in range(30):
        G, A = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        iou = (torch.rand(G, A, generator=g) * 0.6).round(decimals=1)  # many exact ties, some zeros
        if trial % 5 == 0:
            iou[-1] = 0.0  # a GT overlapping nothing: with min_pos_iou=0 it takes every IoU-0 anchor
        for pos_thr, neg_thr in ((0.1, 0.1), (0.4, 0.2)):
            got = max_iou_match_mmdet(iou, pos_thr, neg_thr, min_pos_iou=0.0, gt_max_assign_all=assign_all)
            assert got.tolist() == _mmdet_assigner_loop(iou, pos_thr, neg_thr, 0.0, assign_all), (trial, iou)


def test_mmdet_step_a_differs_from_maskrcnn_benchmark():
    # anchor 0 is GT 0's best anchor but prefers GT 1: maskrcnn-benchmark gives it to GT 1 (its own
    # argmax), mmdetection to GT 0 (the GT being processed); GT 1's best anchor is anchor 1
    iou = torch.tensor([[0.05, 0.0, 0.01], [0.08, 0.3, 0.0]])
    assert max_iou_match(iou, 0.1, 0.1, allow_low_quality=True).tolist() == [1, 1, -1]
    assert max_iou_match_mmdet(iou, 0.1, 0.1).tolist() == [0, 1, -1]
    # ties between GTs of one anchor: the later GT overwrites
    iou = torch.tensor([[0.5, 0.2], [0.5, 0.1]])
    assert max_iou_match_mmdet(iou, 0.1, 0.1).tolist() == [1, 0]
    assert max_iou_match_mmdet(torch.zeros(0, 3), 0.1, 0.1).tolist() == [-1, -1, -1]
    assert max_iou_match_mmdet(torch.zeros(2, 0), 0.1, 0.1).tolist() == []


def test_mmdet_variant_uses_its_step_a_and_giou_weight():
    anchors, counts, gt, labels, matched, logits, deltas = _synthetic_image(3, 6)
    m_orig = paa_first_stage_match(anchors, gt, offset=0.0)
    m_mm = paa_first_stage_match(anchors, gt, offset=0.0, rule="mmdet")
    from assigndet.boxes import box_iou

    ref = max_iou_match_mmdet(box_iou(gt, anchors, offset=0.0), 0.1, 0.1)
    assert torch.equal(m_mm, ref)
    s1 = paa_anchor_scores(anchors, logits, deltas, m_orig, gt, labels, offset=0.0)
    s13 = paa_anchor_scores(anchors, logits, deltas, m_orig, gt, labels, offset=0.0, loc_weight=1.3,
                            encode_targets=False)
    pos = m_orig >= 0
    assert pos.any()
    # the focal part is the same; the GIoU part scales by 1.3 (the GT box vs decode(encode(GT)): float noise)
    torch.testing.assert_close(s13[pos] - s1[pos], 0.3 * (s1[pos] - _focal_part(logits, labels, m_orig)[pos]),
                               rtol=1e-4, atol=1e-4)
    # the whole assignment with variant="mmdet" runs step A by mmdetection's rule
    out = paa_assign(anchors, counts, gt, labels, logits, deltas, offset=0.0, variant="mmdet")
    assert ((out == -1) | (m_mm == out)).all()  # positives keep their step-A GT


def _focal_part(logits, labels, matched):
    p = logits.sigmoid().double()
    t = torch.where(matched >= 0, labels[matched.clamp(min=0)], -1)
    onehot = torch.nn.functional.one_hot(t.clamp(min=0), logits.shape[1]).bool() & (t >= 0)[:, None]
    focal = torch.where(onehot, -0.25 * (1 - p) ** 2 * p.log(), -0.75 * p**2 * (1 - p).log())
    return torch.where((matched >= -1)[:, None], focal, 0.0).sum(1).to(logits.dtype)


def test_paa_anchor_scores_against_naive_formula():
    anchors, counts, gt, labels, matched, logits, deltas = _synthetic_image(3, 6)
    matched = matched.clone()
    matched[:7] = -2  # ignore: no focal term
    scores = paa_anchor_scores(anchors, logits, deltas, matched, gt, labels)
    p = logits.sigmoid().double()
    t = torch.where(matched >= 0, labels[matched.clamp(min=0)], -1)
    onehot = torch.nn.functional.one_hot(t.clamp(min=0), 5).bool() & (t >= 0)[:, None]
    focal = torch.where(onehot, -0.25 * (1 - p) ** 2 * p.log(), -0.75 * p**2 * (1 - p).log())
    focal = torch.where((matched >= -1)[:, None], focal, 0.0).sum(1)
    coder = BoxCoder()
    pos = matched >= 0
    pred = coder.decode(deltas[pos], anchors[pos]).double()
    tgt = coder.decode(coder.encode(gt[matched[pos]], anchors[pos]), anchors[pos]).double()
    from torchvision.ops import generalized_box_iou_loss

    loc = torch.full_like(focal, 1e8)
    loc[pos] = generalized_box_iou_loss(pred, tgt, reduction="none", eps=1e-7)
    torch.testing.assert_close(scores.double(), focal + loc, rtol=2e-5, atol=2e-5)
    assert torch.equal(scores[:7] >= 1e8, torch.ones(7, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------------------------


def test_zero_gt_and_no_positive():
    anchors, counts = mrcnn_anchors((128, 160))
    A = len(anchors)
    logits, deltas = torch.randn(A, 3), torch.randn(A, 4)
    out = paa_assign(anchors, counts, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), logits, deltas)
    assert out.shape == (A,) and (out == -1).all()
    scores = torch.rand(A)
    none = torch.full((A,), -1, dtype=torch.int64)
    assert (paa_partition(scores, none, counts, 3) == -1).all()
    assert (paa_partition(scores, none, counts, 0) == -1).all()
    det = paa_partition_details(scores, none, counts, 2)
    assert det.num_candidates.tolist() == [0, 0] and det.cut.tolist() == [-1, -1]


def test_gts_with_zero_one_two_candidates_and_identical_scores():
    counts = [10, 6]
    A = 16
    scores = torch.rand(A, generator=torch.Generator().manual_seed(0))
    matched = torch.full((A,), -1, dtype=torch.int64)
    matched[3] = 1  # GT 1: one candidate; GT 0: none
    matched[[5, 12]] = 2  # GT 2: two candidates on two levels
    matched[[0, 1, 2, 10, 11]] = 3  # GT 3: identical scores
    scores[[0, 1, 2, 10, 11]] = 0.75
    out = paa_partition(scores, matched, counts, 4)
    ref = reference_partition(scores, matched, counts, 4)
    assert torch.equal(out, ref)
    assert out[3] == 1 and (out == 0).sum() == 0
    # identical scores: identical components, every density equal → the cut is position 0
    assert torch.nonzero(out == 3).flatten().tolist() == [0]
    mm = paa_partition(scores, matched, counts, 4, variant="mmdet")
    assert torch.equal(mm, reference_partition(scores, matched, counts, 4, variant="mmdet"))
    assert mm[3] == -1  # one candidate: negative in mmdetection


def test_topk_per_level_and_tie_order():
    counts = [30, 12]
    scores = torch.arange(42, dtype=torch.float32).flip(0)  # lower index = higher score
    matched = torch.zeros(42, dtype=torch.int64)
    det = paa_partition_details(scores, matched, counts, 1, topk=4)
    assert det.num_candidates.tolist() == [8]
    assert sorted(det.candidate_idxs[0].tolist()) == [26, 27, 28, 29, 38, 39, 40, 41]
    flat = torch.full((42,), 0.5)
    det = paa_partition_details(flat, matched, counts, 1, topk=3)  # exact ties: lowest index
    assert sorted(det.candidate_idxs[0].tolist()) == [0, 1, 2, 30, 31, 32]


def test_duplicate_gts_and_one_gt():
    anchors, counts, gt, labels, matched, logits, deltas = _synthetic_image(5, 3)
    dup = torch.cat((gt, gt[:1]))  # GT 3 duplicates GT 0: ties go to GT 0
    lab = torch.cat((labels, labels[:1]))
    out = paa_assign(anchors, counts, dup, lab, logits, deltas)
    assert (out != 3).all() and (out == 0).any()
    one = paa_assign(anchors, counts, gt[:1], labels[:1], logits, deltas)
    assert set(one.unique().tolist()) == {-1, 0}


_BIG_CASE = """
import resource, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_paa import mrcnn_anchors, random_gts
from assigndet.assign.paa import paa_assign, paa_first_stage_match
image_hw = (800, 1216)
anchors, counts = mrcnn_anchors(image_hw)
assert len(anchors) == 20267
g = torch.Generator().manual_seed(7)
gt = random_gts(g, 500, image_hw, min_size=8.0, max_size=500.0)
labels = torch.randint(0, 80, (500,), generator=g)
logits = torch.randn(len(anchors), 80, generator=g) - 4.0
deltas = torch.randn(len(anchors), 4, generator=g) * 0.3
paa_assign(anchors, counts, gt[:2], labels[:2], logits, deltas)  # warm-up allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = paa_assign(anchors, counts, gt, labels, logits, deltas)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
assert out.shape == (len(anchors),)
assert ((out >= -1) & (out < 500)).all()
assert (out >= 0).sum() > 500
matched = paa_first_stage_match(anchors, gt)
assert torch.equal(out[out >= 0], matched[out >= 0])  # positives keep their step-A GT
print(grown)
"""


def test_many_gts_large_image_bounded_memory():
    """500 GTs on the 20,267 anchors of an 800×1216 image, in a fresh process to read its peak RSS.

    The (G, A) IoU matrix (40 MB) is inherent to step A; the rest must stay small."""
    import pathlib
    import subprocess
    import sys

    code = _BIG_CASE.format(tests=str(pathlib.Path(__file__).parent))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    grown_mib = float(res.stdout.strip().splitlines()[-1])
    assert grown_mib < 200, f"peak RSS grew by {grown_mib:.0f} MiB"


def test_dtypes():
    anchors, counts, gt, labels, matched, logits, deltas = _synthetic_image(21, 6)
    s32 = paa_anchor_scores(anchors, logits, deltas, matched, gt, labels)
    s16 = paa_anchor_scores(anchors, logits.half(), deltas, matched, gt, labels)
    assert s16.dtype == torch.float32 and torch.isfinite(s16[matched >= 0]).all()
    s64 = paa_anchor_scores(anchors.double(), logits.double(), deltas.double(), matched, gt, labels)
    assert s64.dtype == torch.float64
    torch.testing.assert_close(s64.float(), s32, rtol=1e-5, atol=1e-5)
    # float64 scores equal to the float32 ones give the same partition
    a = paa_partition(s32, matched, counts, len(gt))
    b = paa_partition(s32.double(), matched, counts, len(gt))
    assert torch.equal(a, b)
    # negative scores sort correctly (integer sort keys)
    c = paa_partition(s32 - 5.0, matched, counts, len(gt))
    assert torch.equal(c, reference_partition(s32 - 5.0, matched, counts, len(gt)))
