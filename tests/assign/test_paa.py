"""PAA: partition vs the reference loop (scikit-learn per GT), fixtures, batching, edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import load_fixture
from test_gmm import sk_fit

import assigndet.assign as assign
from assigndet.assign.max_iou import max_iou_match_mmdet
from assigndet.assign.paa import (
    PAAAssignment,
    PAAPartition,
    paa_anchor_scores,
    paa_assign,
    paa_first_stage_match,
    paa_partition,
)
from assigndet.boxes import BoxCoder
from assigndet.variants import Convention, PAAVariant

STRIDES = (8, 16, 32, 64, 128)


# small tensors: a second intra-op thread only adds contention on a shared 2-core machine (the
# 500-GT case ran ~5x slower with 2 threads under load)
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# helpers: reference loop, synthetic images
# ---------------------------------------------------------------------------------------------


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
        det = paa_partition(
            case["anchor_scores"], case["iou_based_matched_idx"], case["num_anchors_per_level"], G, details=True
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
    out = paa_assign(
        anchors, counts, [im[2] for im in images], [im[3] for im in images],
        torch.stack([im[5] for im in images]), torch.stack([im[6] for im in images]),
    )
    assert out.shape == (3, len(anchors))
    for b, im in enumerate(images):
        single = paa_assign(anchors, counts, im[2], im[3], im[5], im[6])
        assert torch.equal(out[b], single), b
    assert (out[1] == -1).all()

    # paa_anchor_scores batched (global GT indices) == per image; paa_partition on the batch
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
    part = paa_partition(scores, local, counts, [len(im[2]) for im in images])
    assert torch.equal(part, out)
    for b, im in enumerate(images):
        assert torch.equal(part[b], paa_partition(scores[b], im[4], counts, len(im[2])))


def test_batch_details_give_every_intermediate_per_image():
    images = [_synthetic_image(seed, n) for seed, n in ((10, 4), (11, 0), (12, 9))]
    anchors, counts = images[0][0], images[0][1]
    det = paa_assign(
        anchors, counts, [im[2] for im in images], [im[3] for im in images],
        torch.stack([im[5] for im in images]), torch.stack([im[6] for im in images]), details=True,
    )
    assert isinstance(det, PAAAssignment) and isinstance(det.partition, PAAPartition)
    assert torch.equal(det.partition.matched, det.matched) and det.matched.shape == (3, len(anchors))
    assert det.partition.candidate_idxs.shape[0] == 13  # the GTs of the 3 images, concatenated
    first = 0
    for b, im in enumerate(images):
        single = paa_assign(anchors, counts, im[2], im[3], im[5], im[6], details=True)
        assert torch.equal(det.matched[b], single.matched)
        assert torch.equal(det.first_stage_matched[b], single.first_stage_matched)
        assert torch.equal(det.first_stage_matched[b], im[4])
        G = len(im[2])
        rows = slice(first, first + G)
        n = single.partition.candidate_idxs.shape[1]
        # candidate indices are anchor indices inside their own image
        assert torch.equal(det.partition.candidate_idxs[rows, :n], single.partition.candidate_idxs)
        assert (det.partition.candidate_idxs[rows, n:] == -1).all()
        assert torch.equal(det.partition.cut[rows], single.partition.cut)
        assert torch.equal(det.partition.fit.n_iter[rows], single.partition.fit.n_iter)
        first += G


def test_previous_names_are_aliases_of_the_batch_api():
    anchors, counts, gt, labels, matched, logits, deltas = _synthetic_image(4, 5)
    scores = paa_anchor_scores(anchors, logits, deltas, matched, gt, labels)
    det = assign.paa_partition_details(scores, matched, counts, len(gt), variant="mmdet")
    ref = paa_partition(scores, matched, counts, len(gt), variant=PAAVariant.mmdet, details=True)
    assert torch.equal(det.matched, ref.matched) and torch.equal(det.cut, ref.cut)
    assert assign.paa_partition_batch is paa_partition and assign.paa_assign_batch is paa_assign
    assert assign.gmm_fit is assign.gmm.gmm_fit
    with pytest.raises(ValueError, match="expected one of: original, mmdet, minimal"):
        paa_partition(scores, matched, counts, len(gt), variant="mmdetection")


# ---------------------------------------------------------------------------------------------
# step A, step B
# ---------------------------------------------------------------------------------------------


def test_mmdet_variant_uses_its_step_a_and_giou_weight():
    anchors, counts, gt, labels, matched, logits, deltas = _synthetic_image(3, 6)
    m_orig = paa_first_stage_match(anchors, gt, offset=0.0)
    m_mm = paa_first_stage_match(anchors, gt, offset=0.0, rule=Convention.mmdet)
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
    det = paa_partition(scores, none, counts, 2, details=True)
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
    det = paa_partition(scores, matched, counts, 1, topk=4, details=True)
    assert det.num_candidates.tolist() == [8]
    assert sorted(det.candidate_idxs[0].tolist()) == [26, 27, 28, 29, 38, 39, 40, 41]
    flat = torch.full((42,), 0.5)
    det = paa_partition(flat, matched, counts, 1, topk=3, details=True)  # exact ties: lowest index
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
sys.path[:0] = [{here!r}, {tests!r}]  # test_paa, and the conftest it imports
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

    here = pathlib.Path(__file__).resolve().parent
    code = _BIG_CASE.format(here=str(here), tests=str(here.parent))
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
