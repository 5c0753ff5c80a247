import pytest
import torch

from assigndet.ops import MultiScalePrRoIPool
from assigndet.postprocess.iou_nms import refine_boxes
from conftest import load_fixture


def synthetic_iou_fn(objects, object_labels, labels):
    """The fixtures' IoU predictor: max over same-class objects of (1 + GIoU) / 2, else 0.05."""

    def iou_fn(boxes):  # (K, 4) -> (K,)
        lt = torch.max(boxes[:, None, :2], objects[None, :, :2])  # (K, G, 2)
        rb = torch.min(boxes[:, None, 2:], objects[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]  # (K, G)
        area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (K,)
        area_o = (objects[:, 2] - objects[:, 0]) * (objects[:, 3] - objects[:, 1])  # (G,)
        union = area_b[:, None] + area_o[None, :] - inter + 1e-6
        elt = torch.min(boxes[:, None, :2], objects[None, :, :2])
        erb = torch.max(boxes[:, None, 2:], objects[None, :, 2:])
        ewh = (erb - elt).clamp(min=0)
        enclose = ewh[..., 0] * ewh[..., 1] + 1e-6
        giou = inter / union - (enclose - union) / enclose  # (K, G)
        q = (1 + giou) / 2
        same = labels[:, None] == object_labels[None, :]  # (K, G)
        q = torch.where(same, q, torch.full_like(q, -1.0)).amax(dim=1)  # (K,)
        has = same.any(dim=1)
        return torch.where(has, q, torch.full_like(q, 0.05))

    return iou_fn


def test_fixture_cases():
    cases = load_fixture("iou_refine_cases.pt")
    for c in cases:
        cfg = c["cfg"]
        calls = []
        fn = synthetic_iou_fn(c["objects"], c["object_labels0"], c["in_labels"])

        def iou_fn(b):
            calls.append(b.shape[0])
            return fn(b)

        boxes, ious = refine_boxes(
            c["in_bboxes"], iou_fn, steps=cfg["t"], omega1=cfg["omega_1"], omega2=cfg["omega_2"], step_size=cfg["lamb"]
        )
        k = c["in_bboxes"].shape[0]
        assert boxes.shape == (k, 4) and ious.shape == (k,)
        assert set(calls) == {k}  # always all boxes, in input order
        scores = c["in_scores"] * ious
        # the reference lists boxes in the order they stopped: match each input box to its row
        ref_boxes, ref_scores, ref_labels = c["out_bboxes"], c["out_scores"], c["out_labels"]
        assert ref_boxes.shape[0] == k
        dist = (boxes[:, None, :] - ref_boxes[None, :, :]).abs().amax(dim=2)  # (K, K)
        dist[c["in_labels"][:, None] != ref_labels[None, :]] = float("inf")
        match = dist.argmin(dim=1)
        assert match.unique().numel() == k, f"case {c['case_id']}: not a one-to-one match"
        torch.testing.assert_close(boxes, ref_boxes[match], rtol=0, atol=1e-4, msg=f"case {c['case_id']}")
        torch.testing.assert_close(scores, ref_scores[match], rtol=0, atol=1e-6, msg=f"case {c['case_id']}")


def test_stopping_rules_and_last_state():
    """A 1-D toy: IoU(x) per box, hand-checkable steps."""
    target = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    fn = synthetic_iou_fn(target, torch.tensor([0]), torch.tensor([0, 0, 1]))
    boxes = torch.tensor([[12.0, 11.0, 29.0, 33.0], [10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0]])
    out, ious = refine_boxes(boxes, fn, steps=5, step_size=0.5)
    # box 2 (no object of its class): constant IoU -> zero gradient -> |dIoU| < omega1, stops at step 1
    assert torch.equal(out[2], boxes[2]) and ious[2].item() == pytest.approx(0.05)
    # box 1 sits on the optimum: stays
    assert torch.allclose(out[1], boxes[1]) and ious[1].item() == pytest.approx(1.0, abs=1e-6)
    # box 0 improves
    assert ious[0] > fn(boxes[:1])[0]
    # steps=0: initial boxes and their IoUs
    out0, ious0 = refine_boxes(boxes, fn, steps=0)
    assert torch.equal(out0, boxes) and torch.allclose(ious0, fn(boxes))


def test_keeps_new_state_when_iou_drops():
    """Trap 19: a box whose IoU drops by more than 0.01 stops but keeps the worse position."""
    calls = []

    def iou_fn(b):  # IoU = x1 on step 0 (gradient 1 on x1), then lower
        calls.append(b.detach().clone())
        return b[:, 0] * 0.1 if len(calls) == 1 else -b[:, 0] * 0.1

    boxes = torch.tensor([[1.0, 0.0, 3.0, 2.0]])
    out, ious = refine_boxes(boxes, iou_fn, steps=5, step_size=1.0)
    # delta x1 = 1.0 * 0.1 * w(2) = 0.2
    assert out[0].tolist() == pytest.approx([1.2, 0.0, 3.0, 2.0])
    assert ious.tolist() == pytest.approx([-0.12])
    assert len(calls) == 2


def test_empty():
    out, ious = refine_boxes(torch.zeros(0, 4), lambda b: b.sum(1))
    assert out.shape == (0, 4) and ious.shape == (0,)


def test_refine_through_prroi_pool_under_no_grad():
    """The real IoU path: boxes -> MultiScalePrRoIPool -> a linear 'head'; works inside no_grad."""
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 4, 32 // s * 4, 32 // s * 4, generator=g) for s in (1, 2)]
    pool = MultiScalePrRoIPool(2, 3, strides=(4, 8))
    head = torch.nn.Linear(4 * 9, 1)

    def iou_fn(b):
        return torch.sigmoid(head(pool(feats, [b]).flatten(1))).squeeze(1)

    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 40.0, 140.0, 120.0]])
    with torch.no_grad():
        out, ious = refine_boxes(boxes, iou_fn, steps=3, step_size=2.0)
    assert not out.requires_grad and not ious.requires_grad
    assert not torch.equal(out, boxes)
    assert head.weight.grad is None  # only the boxes are differentiated
