import pytest
import torch

from assigndet.assign import atss_assign
from assigndet.boxes import box_iou
from conftest import load_fixture


def test_fixture_cases_both_offsets():
    cases = load_fixture("atss_cases.pt")
    checked = 0
    for c in cases:
        for offset, key in ((1.0, "matched_gt"), (0.0, "matched_gt_mmdet")):
            m = atss_assign(c["anchors"], c["num_anchors_per_level"], c["gt_boxes"], topk=c["topk"], offset=offset)
            if c["gt_boxes"].shape[0] == 0:
                assert (m == -1).all()
                continue
            assert torch.equal(m, c[key]), f"case {c['case_id']} offset {offset}"
            checked += 1
    assert checked >= 16


def naive_atss(anchors, per_level, gts, topk=9, offset=1.0):
    """Loop reference of SPEC §2.2, one GT at a time."""
    A = anchors.shape[0]
    ious = box_iou(anchors, gts, offset=offset)
    actr = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = torch.full((A,), -1e8)
    out = torch.full((A,), -1, dtype=torch.int64)
    for g in range(gts.shape[0]):
        gctr = (gts[g, :2] + gts[g, 2:]) / 2
        d = ((actr - gctr) ** 2).sum(1).sqrt()
        cands, start = [], 0
        for n in per_level:
            k = min(topk, n)
            cands.append(d[start:start + n].topk(k, largest=False).indices + start)
            start += n
        cands = torch.cat(cands)
        ci = ious[cands, g]
        thr = ci.mean() + ci.std()
        for a in cands.tolist():
            cx, cy = actr[a].tolist()
            x1, y1, x2, y2 = gts[g].tolist()
            inside = min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01
            if ious[a, g] >= thr and inside and ious[a, g] > best[a]:
                best[a] = ious[a, g]
                out[a] = g
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_equals_naive_loop(seed):
    c = load_fixture("atss_cases.pt")[2]
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(12, 2, generator=g) * 250
    wh = torch.rand(12, 2, generator=g) * 120 + 4
    gts = torch.cat([xy, xy + wh], 1)
    for offset in (1.0, 0.0):
        got = atss_assign(c["anchors"], c["num_anchors_per_level"], gts, offset=offset)
        assert torch.equal(got, naive_atss(c["anchors"], c["num_anchors_per_level"], gts, offset=offset))


def test_zero_gt_and_margin():
    anchors = torch.tensor([[0.0, 0.0, 9.0, 9.0]] * 3)  # equal IoUs: std 0, every candidate passes
    assert atss_assign(anchors, [3], torch.zeros(0, 4)).tolist() == [-1, -1, -1]
    # the anchor centre (4.5, 4.5) must be inside the GT by strictly more than 0.01
    assert atss_assign(anchors, [3], torch.tensor([[4.5 - 0.0099, 0.0, 30.0, 30.0]])).tolist() == [-1, -1, -1]
    assert atss_assign(anchors, [3], torch.tensor([[4.5 - 0.0101, 0.0, 30.0, 30.0]])).tolist() == [0, 0, 0]


def test_gt_blocks_give_the_same_assignment_as_one_block(monkeypatch):
    """Thousands of GTs are assigned in blocks (bounded memory): the same matches (several-GT
    ties included: the lower GT index wins) and IoU targets as one block."""
    import assigndet.assign.atss as atss_mod
    from assigndet.assign import atss_assign, dynamic_atss_assign

    g = torch.Generator().manual_seed(0)
    sizes = [(8, 10), (4, 5), (2, 3)]  # feature maps of 3 levels, strides 8, 16, 32
    anchors = torch.cat([
        torch.stack(torch.meshgrid(torch.arange(h) * s + s / 2, torch.arange(w) * s + s / 2, indexing="ij"), -1)
        .reshape(-1, 2).flip(1).repeat(1, 2) + torch.tensor([-2.0, -2.0, 2.0, 2.0]) * s
        for (h, w), s in zip(sizes, (8, 16, 32))])
    counts = [h * w for h, w in sizes]
    xy = torch.rand(40, 2, generator=g) * 60
    gts = torch.cat((xy, xy + 8 + torch.rand(40, 2, generator=g) * 40), 1)
    gts = torch.cat((gts, gts[:5]))  # exact duplicates: several-GT ties
    preds = anchors + torch.randn(anchors.shape, generator=g) * 3
    one = atss_assign(anchors, counts, gts, topk=3), dynamic_atss_assign(anchors, counts, gts, preds, topk=3)
    monkeypatch.setattr(atss_mod, "GT_BLOCK_BYTES", 4 * len(anchors) * 7)  # blocks of 7 GTs
    assert len(atss_mod.gt_blocks(len(anchors), len(gts))) == 7
    blocked = atss_assign(anchors, counts, gts, topk=3), dynamic_atss_assign(anchors, counts, gts, preds, topk=3)
    assert torch.equal(one[0], blocked[0]) and (one[0] >= 0).any()
    assert torch.equal(one[1][0], blocked[1][0]) and torch.equal(one[1][1], blocked[1][1])
