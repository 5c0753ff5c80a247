import torch

from assigndet.assign import atss_assign, dynamic_atss_assign
from assigndet.boxes import BoxCoder
from conftest import load_fixture


def test_fixture_cases():
    cases = load_fixture("dynamic_atss_cases.pt")
    checked = 0
    for c in cases:
        pred = BoxCoder().decode(c["box_regression"], c["anchors"])
        if c.get("pred_boxes") is not None:
            torch.testing.assert_close(pred, c["pred_boxes"])
        m, iou = dynamic_atss_assign(c["anchors"], c["num_anchors_per_level"], c["gt_boxes"], pred, topk=c["topk"])
        if c["gt_boxes"].shape[0] == 0:
            assert (m == -1).all()
            continue
        assert torch.equal(m, c["matched_gt"])
        torch.testing.assert_close(iou, c["iou_scores"])
        checked += 1
    assert checked >= 4


def test_reduces_to_atss_when_predictions_are_anchors():
    c = load_fixture("atss_cases.pt")[2]
    m, _ = dynamic_atss_assign(c["anchors"], c["num_anchors_per_level"], c["gt_boxes"], c["anchors"].clone())
    assert torch.equal(m, atss_assign(c["anchors"], c["num_anchors_per_level"], c["gt_boxes"]))
