import math

import torch
import torchvision

from assigndet.boxes import BoxCoder, box_area, box_iou, clip_boxes, elementwise_iou, flip_boxes, giou_loss


def rand_boxes(n, size=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    return torch.cat([xy, xy + wh], 1)


def test_iou_offset0_equals_torchvision():
    a, b = rand_boxes(20, seed=1), rand_boxes(30, seed=2)
    torch.testing.assert_close(box_iou(a, b, offset=0.0), torchvision.ops.box_iou(a, b))


def test_iou_offset1_hand_computed():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # 10 x 10 pixels inclusive
    b = torch.tensor([[5.0, 0.0, 14.0, 9.0]])  # overlap 5 x 10
    assert box_area(a, offset=1.0).item() == 100.0
    assert math.isclose(box_iou(a, b, offset=1.0).item(), 50 / 150, rel_tol=1e-6)
    assert math.isclose(elementwise_iou(a, b, offset=1.0).item(), 50 / 150, rel_tol=1e-6)
    # equals torchvision's IoU on boxes shifted by +1 at the far edges
    shift = torch.tensor([0, 0, 1.0, 1.0])
    torch.testing.assert_close(box_iou(a, b), torchvision.ops.box_iou(a + shift, b + shift))


def test_clip_and_flip_conventions():
    boxes = torch.tensor([[-5.0, -3.0, 120.0, 50.0]])
    assert clip_boxes(boxes, (40, 100), offset=1.0).tolist() == [[0.0, 0.0, 99.0, 39.0]]
    assert clip_boxes(boxes, (40, 100), offset=0.0).tolist() == [[0.0, 0.0, 100.0, 40.0]]
    b = torch.tensor([[10.0, 2.0, 19.0, 8.0]])
    assert flip_boxes(b, 100, offset=1.0).tolist() == [[80.0, 2.0, 89.0, 8.0]]
    torch.testing.assert_close(flip_boxes(flip_boxes(b, 100), 100), b)


def test_coder_roundtrip_and_clamp():
    anchors = rand_boxes(50, seed=3)
    gts = rand_boxes(50, seed=4)
    for offset in (1.0, 0.0):
        coder = BoxCoder(offset=offset)
        torch.testing.assert_close(coder.decode(coder.encode(gts, anchors), anchors), gts, atol=1e-3, rtol=1e-5)
    coder = BoxCoder()
    d = torch.tensor([[0.0, 0.0, 100.0, -100.0]])
    out = coder.decode(d, torch.tensor([[0.0, 0.0, 15.0, 15.0]]))
    w = out[0, 2] - out[0, 0] + 1
    assert math.isclose(w.item(), 1000.0, rel_tol=1e-5)  # clamped at ln(1000/16)
    assert out[0, 3] - out[0, 1] + 1 < 1  # no lower clamp in the original


def test_giou_loss_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert giou_loss(a, a).item() < 1e-6
    far = torch.tensor([[20.0, 0.0, 30.0, 10.0]])
    # disjoint: IoU 0, enclosing 300, union 200 -> GIoU = -1/3
    assert math.isclose(giou_loss(a, far).item(), 1 + 1 / 3, rel_tol=1e-5)
    # an inverted prediction is made well-formed (zero width), not negative area
    inv = torch.tensor([[10.0, 0.0, 0.0, 10.0]])
    assert torch.isfinite(giou_loss(inv, a)).all()
    ref = torchvision.ops.generalized_box_iou_loss(rand_boxes(10, seed=5), rand_boxes(10, seed=6))
    torch.testing.assert_close(giou_loss(rand_boxes(10, seed=5), rand_boxes(10, seed=6)), ref, atol=1e-5, rtol=1e-4)
