"""The intermediates of ATSS and Dynamic ATSS (``details=True``, what ``assigndet explain`` shows):
the same assignment bit for bit, and every intermediate checked against a loop written here."""
import torch

from assigndet.assign import atss_assign, dynamic_atss_assign
from assigndet.boxes import BoxCoder, box_iou
from conftest import load_fixture


def _random_gts(seed, n=7):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 250
    wh = torch.rand(n, 2, generator=g) * 120 + 4
    return torch.cat([xy, xy + wh], 1)


def _nearest_per_level(anchors, per_level, gt, k):
    """Loop reference: per level the k anchors nearest to the GT centre, and their level."""
    actr = (anchors[:, :2] + anchors[:, 2:]) / 2
    gctr = (gt[:2] + gt[2:]) / 2
    d = ((actr - gctr) ** 2).sum(1).sqrt()
    idx, lvl, start = [], [], 0
    for level, n in enumerate(per_level):
        kk = min(k, n)
        idx += (d[start:start + n].topk(kk, largest=False).indices + start).tolist()
        lvl += [level] * kk
        start += n
    return idx, lvl


def test_atss_details_match_the_assignment_and_a_loop_over_gts():
    c = load_fixture("atss_cases.pt")[2]
    anchors, per_level = c["anchors"], c["num_anchors_per_level"]
    for seed, offset in ((0, 1.0), (1, 0.0), (2, 1.0)):
        gts = _random_gts(seed)
        d = atss_assign(anchors, per_level, gts, offset=offset, details=True)
        assert torch.equal(d.matched, atss_assign(anchors, per_level, gts, offset=offset))
        ious = box_iou(anchors, gts, offset=offset)
        for g in range(len(gts)):
            idx, lvl = _nearest_per_level(anchors, per_level, gts[g], 9)
            assert sorted(d.candidate_idxs[:, g].tolist()) == sorted(idx)
            assert d.candidate_levels.tolist() == lvl
            ci = ious[idx, g]
            torch.testing.assert_close(d.metrics[0][:, g].sort().values, ci.sort().values)
            torch.testing.assert_close(d.means[0, g], ci.mean())
            torch.testing.assert_close(d.stds[0, g], ci.std())
            torch.testing.assert_close(d.threshold[g], ci.mean() + ci.std())
            # a final positive of g is a candidate marked positive for g
            final = (d.matched == g).nonzero().squeeze(1).tolist()
            marked = d.candidate_idxs[:, g][d.is_positive[:, g]].tolist()
            assert set(final) <= set(marked)
            assert all(float(ious[a, g]) >= float(d.threshold[g]) for a in marked)
            assert torch.equal(d.is_positive[:, g], d.above_threshold[:, g] & d.inside[:, g])
            assert torch.equal(d.above_threshold[:, g], ious[d.candidate_idxs[:, g], g] >= d.threshold[g])
            ctr = (anchors[d.candidate_idxs[:, g], :2] + anchors[d.candidate_idxs[:, g], 2:]) / 2  # (K, 2)
            margin = torch.cat([ctr - gts[g, :2], gts[g, 2:] - ctr], 1).amin(1)  # (K,)
            assert torch.equal(d.inside[:, g], margin > 0.01)


def test_atss_details_without_gts_are_empty():
    anchors = torch.tensor([[0.0, 0.0, 9.0, 9.0]] * 3)
    d = atss_assign(anchors, [3], torch.zeros(0, 4), details=True)
    assert d.matched.tolist() == [-1, -1, -1]
    assert d.candidate_idxs.shape == (0, 0) and d.threshold.shape == (0,)


def test_dynamic_atss_details_are_p_plus_q_with_its_threshold():
    c = load_fixture("dynamic_atss_cases.pt")[0]
    anchors, per_level = c["anchors"], c["num_anchors_per_level"]
    pred = BoxCoder().decode(c["box_regression"], anchors)
    gts = c["gt_boxes"] if len(c["gt_boxes"]) else _random_gts(3)
    m, iou = dynamic_atss_assign(anchors, per_level, gts, pred, topk=c["topk"])
    d = dynamic_atss_assign(anchors, per_level, gts, pred, topk=c["topk"], details=True)
    assert torch.equal(d.matched, m) and torch.equal(d.iou_target, iou)
    a = d.atss
    p = box_iou(pred, gts).gather(0, a.candidate_idxs)  # (K, G)
    q = box_iou(anchors, gts).gather(0, a.candidate_idxs)  # (K, G)
    assert torch.equal(a.metrics[0], p) and torch.equal(a.metrics[1], q)
    torch.testing.assert_close(a.quality, p + q)
    torch.testing.assert_close(a.threshold, p.mean(0) + q.mean(0) + p.std(0) + q.std(0))
    assert bool((a.quality >= a.threshold)[a.is_positive].all())
    for g in range(len(gts)):
        final = set((m == g).nonzero().squeeze(1).tolist())
        assert final <= set(a.candidate_idxs[:, g][a.is_positive[:, g]].tolist())
