import torch

from assigndet.assign import atss_assign, dynamic_atss_assign
from assigndet.boxes import BoxCoder
from assigndet.detectors.dynamic_atss import quality_focal_loss_sum
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


def test_quality_focal_loss_hand_computed():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    labels = torch.tensor([1, 2])  # anchor 0 positive for class 1, anchor 1 background
    q = torch.tensor([0.7, 0.0])
    p = logits.sigmoid()
    bce = lambda x, t: -(t * torch.log(x) + (1 - t) * torch.log(1 - x))  # noqa: E731
    expect = (p[0, 0] ** 2 * bce(p[0, 0], 0.0) + (0.7 - p[0, 1]).abs() ** 2 * bce(p[0, 1], 0.7)
              + p[1, 0] ** 2 * bce(p[1, 0], 0.0) + p[1, 1] ** 2 * bce(p[1, 1], 0.0))
    torch.testing.assert_close(quality_focal_loss_sum(logits, labels, q), expect)
