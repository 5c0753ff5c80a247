"""The one IoU matcher: maskrcnn-benchmark / detectron2 rule, mmdetection's MaxIoUAssigner, the RPN."""
from __future__ import annotations

import pytest
import torch

from assigndet.assign.max_iou import max_iou_match, max_iou_match_mmdet
from assigndet.variants import LowQuality


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


def _matcher_loop(iou, high, low):
    """maskrcnn-benchmark's / detectron2's ``Matcher`` with low-quality matches, as a loop: the best
    anchors of every GT get back their own argmax GT."""
    G, A = iou.shape
    out = []
    for a in range(A):
        col = iou[:, a].tolist()
        best = max(col)
        arg = col.index(best)
        out.append(-1 if best < low else (-2 if best < high else arg))
    for i in range(G):
        row = iou[i].tolist()
        for a in range(A):
            if row[a] == max(row):
                col = iou[:, a].tolist()
                out[a] = col.index(max(col))
    return out


def _previous_rpn_match(iou, high, low, low_quality):
    """``detectors.rcnn_parts.rpn_match`` as it was before it called the one matcher."""
    best_iou, best_gt = iou.max(dim=0)
    matches = torch.where(best_iou < low, -1, best_gt)
    if high > low:
        matches = torch.where((best_iou >= low) & (best_iou < high), -2, matches)
    G, A = iou.shape
    gt_best = iou.max(dim=1).values  # (G,)
    if low_quality == "detectron2":  # the previous max_iou_match(..., allow_low_quality=True)
        return torch.where((iou == gt_best[:, None]).any(dim=0), best_gt, matches)
    hit = (iou == gt_best[:, None]) & (gt_best[:, None] >= low)  # (G, A)
    last = torch.where(hit, torch.arange(G)[:, None].expand(G, A), -1).amax(dim=0)
    return torch.where(last >= 0, last, matches)


def _tie_heavy_cases(seed, n=40):
    g = torch.Generator().manual_seed(seed)
    for trial in range(n):
        G, A = int(torch.randint(1, 7, (1,), generator=g)), int(torch.randint(1, 50, (1,), generator=g))
        iou = (torch.rand(G, A, generator=g) * 0.9).round(decimals=1)  # many exact ties, some zeros
        if trial % 4 == 0:
            iou[-1] = 0.0  # a GT overlapping nothing
        if trial % 4 == 1:
            iou[0] = iou[-1]  # two GTs with identical rows
        yield trial, iou


@pytest.mark.parametrize("low_quality", ["mmdet", "detectron2"])
def test_rpn_rules_of_the_one_matcher_reproduce_the_previous_rpn_match(low_quality):
    for trial, iou in _tie_heavy_cases(11):
        for high, low in ((0.7, 0.3), (0.5, 0.5), (0.4, 0.2)):
            got = max_iou_match(iou, high, low, low_quality, min_pos_iou=low)
            assert torch.equal(got, _previous_rpn_match(iou, high, low, low_quality)), (trial, iou)
            if low_quality == "mmdet":  # and the MaxIoUAssigner loop with min_pos_iou = low (the
                # loop compares Python floats: in float64, so that 0.7 is the same number on both sides)
                got64 = max_iou_match(iou.double(), high, low, low_quality, min_pos_iou=low)
                assert got64.tolist() == _mmdet_assigner_loop(iou.double(), high, low, low, True), (trial, iou)


def test_detectron2_rule_equals_the_matcher_loop_and_the_boolean_flag():
    for trial, iou in _tie_heavy_cases(12):
        for high, low in ((0.1, 0.1), (0.7, 0.3)):
            iou = iou.double()  # the loop compares Python floats
            ref = _matcher_loop(iou, high, low)
            assert max_iou_match(iou, high, low, LowQuality.detectron2).tolist() == ref, (trial, iou)
            assert max_iou_match(iou, high, low, True).tolist() == ref
            assert max_iou_match(iou, high, low, allow_low_quality=True).tolist() == ref
    with pytest.raises(ValueError, match="expected one of: mmdet, detectron2"):
        max_iou_match(torch.ones(1, 2), 0.5, 0.5, "torchvision")
