"""Assignment statistics of training (``assign/*`` in metrics.jsonl): right on a case counted by
hand, accumulated over a log period, and produced by a training step of ATSS, PAA and Dynamic ATSS
from the assignment that step made."""
import types

import pytest
import torch
from torch import nn

import assigndet.detectors.dynamic_atss as dyn_module
from assigndet.boxes import box_iou
from assigndet.detectors import build_model
from assigndet.detectors.assignment_stats import assignment_counts, assignment_stats, record_assignment
from assigndet.detectors.common import gather_boxes
from assigndet.presets import load_config
from conftest import TINY_OVERRIDES

pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_case():
    """3 levels of 4, 2 and 1 anchors; image 0 has 2 GTs, image 1 has 2 GTs of which one gets nothing."""
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 60, 60], [20, 20, 30, 30],  # level 0
                            [0, 0, 10, 10], [0, 0, 20, 10],  # level 1
                            [40, 40, 80, 80]], dtype=torch.float32)  # level 2
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 1])},
               {"boxes": torch.tensor([[0.0, 0, 20, 10], [60, 0, 70, 5]]), "labels": torch.tensor([0, 0])}]
    matched = torch.tensor([[0, 0, -1, 1, -1, 0, -1],  # GT0: anchors 0 (IoU 1), 1 (1/2), 5 (1/2); GT1: 3 (IoU 1)
                            [-1, -1, -2, -1, 0, -1, -1]])  # GT0: anchor 4 (IoU 1/2); -2 = ignore, not positive
    return anchors, targets, matched


def _model_with_levels(strides=(8, 16, 32)):
    m = nn.Module()
    m.cfg = types.SimpleNamespace(anchor_strides=list(strides))
    m.offset = 0.0
    return m


def test_stats_of_a_case_counted_by_hand():
    anchors, targets, matched = _hand_case()
    m = _model_with_levels()
    record_assignment(m, matched, anchors, gather_boxes(matched, targets), targets, [4, 2, 1])
    s = assignment_stats(m)
    # 5 positives for 4 GTs; image 1's second GT has none; levels 3 / 2 / 0; IoUs 1, .5, .5, 1, .5
    assert s["assign/pos_per_gt"] == pytest.approx(5 / 4)
    assert s["assign/no_pos_share"] == pytest.approx(1 / 4)
    assert s["assign/level_share/P3"] == pytest.approx(3 / 5)
    assert s["assign/level_share/P4"] == pytest.approx(2 / 5)
    assert s["assign/level_share/P5"] == 0.0
    assert s["assign/mean_iou"] == pytest.approx(3.5 / 5)


def test_stats_accumulate_over_a_period_and_restart_after_each_read():
    anchors, targets, matched = _hand_case()
    m = _model_with_levels()
    boxes = gather_boxes(matched, targets)
    record_assignment(m, matched, anchors, boxes, targets, [4, 2, 1])
    nothing = torch.full_like(matched, -1)
    record_assignment(m, nothing, anchors, gather_boxes(nothing, targets), targets, [4, 2, 1])
    s = assignment_stats(m)
    assert s["assign/pos_per_gt"] == pytest.approx(5 / 8)  # 5 positives over the period's 8 GTs
    assert s["assign/no_pos_share"] == pytest.approx(5 / 8)
    assert s["assign/mean_iou"] == pytest.approx(0.7)
    # the next period starts empty: GT-less figures are left out, nothing undefined is logged
    assert assignment_stats(m) == {}
    record_assignment(m, nothing, anchors, gather_boxes(nothing, targets), targets, [4, 2, 1])
    assert assignment_stats(m) == {"assign/pos_per_gt": 0.0, "assign/no_pos_share": 1.0}


def test_a_wrapped_model_and_a_model_without_statistics():
    anchors, targets, matched = _hand_case()
    inner = _model_with_levels()
    record_assignment(inner, matched, anchors, gather_boxes(matched, targets), targets, [4, 2, 1])
    wrapper = types.SimpleNamespace(module=inner)  # what DistributedDataParallel exposes
    assert assignment_stats(wrapper)["assign/pos_per_gt"] == pytest.approx(1.25)
    assert assignment_stats(nn.Linear(2, 2)) == {}


def test_counts_vector_layout():
    anchors, targets, matched = _hand_case()
    c = assignment_counts(matched, anchors, gather_boxes(matched, targets), [2, 2], [4, 2, 1], offset=0.0)
    assert c.tolist() == pytest.approx([4, 5, 3.5, 1, 3, 2, 0])


def _expected(matched_per_image, boxes_per_image, anchors, num_per_level, offset):
    """The figures by a loop over GTs, from what the assigner returned."""
    gts = pos = nopos = 0
    iou_sum = 0.0
    per_level = [0] * len(num_per_level)
    ends = torch.tensor(num_per_level).cumsum(0).tolist()
    for matched, boxes in zip(matched_per_image, boxes_per_image):
        iou = box_iou(anchors, boxes, offset=offset) if len(boxes) else None
        for g in range(len(boxes)):
            idx = (matched == g).nonzero().squeeze(1).tolist()
            gts, pos, nopos = gts + 1, pos + len(idx), nopos + (not idx)
            for a in idx:
                iou_sum += float(iou[a, g])
                per_level[next(lvl for lvl, e in enumerate(ends) if a < e)] += 1
    out = {"assign/pos_per_gt": pos / gts, "assign/no_pos_share": nopos / gts, "assign/mean_iou": iou_sum / pos}
    out.update({f"assign/level_share/P{lvl + 3}": n / pos for lvl, n in enumerate(per_level)})
    return out


@pytest.mark.parametrize("arch", ["atss", "paa", "dynamic_atss"])
def test_a_training_step_records_the_assignment_it_made(arch, monkeypatch):
    torch.manual_seed(0)
    model = build_model(load_config("atss_R_18_shapes", TINY_OVERRIDES + [f"model.arch={arch}"]).model).train()
    seen = []  # (matched (A,), resized GT boxes) per image, captured from the detector's own assigner
    if arch == "dynamic_atss":
        real = dyn_module.dynamic_atss_assign

        def spy(anchors, num_per_level, boxes, *a, **kw):
            m, iou = real(anchors, num_per_level, boxes, *a, **kw)
            seen.append((m, boxes, anchors, num_per_level))
            return m, iou
        monkeypatch.setattr(dyn_module, "dynamic_atss_assign", spy)
    else:
        real_assign = model.assign

        def spy(anchors, num_per_level, targets, *a):
            m = real_assign(anchors, num_per_level, targets, *a)
            seen.extend((m[i], t["boxes"], anchors, num_per_level) for i, t in enumerate(targets))
            return m
        model.assign = spy
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, 64, 80, generator=g) * 255).to(torch.uint8) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [0.0, 0.0, 3.0, 3.0]]), "labels": torch.tensor([1, 1])}]
    model(images, targets)
    stats = assignment_stats(model)
    assert len(seen) == 2
    anchors, num_per_level = seen[0][2], seen[0][3]
    want = _expected([s[0] for s in seen], [s[1] for s in seen], anchors, num_per_level, model.offset)
    assert set(stats) == set(want)
    for k, v in want.items():
        assert stats[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert stats["assign/pos_per_gt"] > 0
    assert sum(v for k, v in stats.items() if "level_share" in k) == pytest.approx(1.0)
