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


def test_half_precision_boxes_are_upcast_like_torchvision():
    """float16 / bfloat16 boxes: IoU, areas and GIoU are computed and returned in float32 (as
    torchvision's ``_upcast``), so large coordinates do not overflow 65504 to inf / NaN."""
    a = rand_boxes(8, size=1000.0, seed=7) * 20  # areas up to ~1e8
    b = rand_boxes(6, size=1000.0, seed=8) * 20
    for dtype in (torch.float16, torch.bfloat16):
        ah, bh = a.to(dtype), b.to(dtype)
        for offset in (0.0, 1.0):
            iou = box_iou(ah, bh, offset=offset)
            assert iou.dtype == torch.float32 and torch.isfinite(iou).all()
            torch.testing.assert_close(iou, box_iou(ah.float(), bh.float(), offset=offset))
            e = elementwise_iou(ah[:6], bh, offset=offset)
            assert e.dtype == torch.float32
            torch.testing.assert_close(e, elementwise_iou(ah[:6].float(), bh.float(), offset=offset))
            assert box_area(ah, offset=offset).dtype == torch.float32
        assert torchvision.ops.box_iou(ah, bh).dtype == box_iou(ah, bh, offset=0.0).dtype
        torch.testing.assert_close(box_iou(ah, bh, offset=0.0), torchvision.ops.box_iou(ah, bh), atol=2e-3, rtol=0)
        g = giou_loss(ah[:6], bh)
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, giou_loss(ah[:6].float(), bh.float()))
    big = torch.tensor([[0.0, 0.0, 300.0, 300.0]], dtype=torch.float16)  # area 9e4 > float16 max
    assert box_iou(big, big, offset=0.0).item() == 1.0 and box_iou(big, big).item() == 1.0


def test_empty_boxes_give_iou_zero_not_nan():
    """torchvision gives 0/0 = NaN for two empty boxes; here the IoU is 0 (and stays exact otherwise)."""
    empty = torch.tensor([[5.0, 5.0, 5.0, 9.0], [3.0, 3.0, 3.0, 3.0]])
    assert box_iou(empty, empty, offset=0.0).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert elementwise_iou(empty, empty, offset=0.0).tolist() == [0.0, 0.0]
    inverted = torch.tensor([[9.0, 9.0, 2.0, 2.0]])
    assert box_iou(inverted, rand_boxes(4), offset=0.0).eq(0).all()
    a, b = rand_boxes(20, seed=1), rand_boxes(30, seed=2)
    assert torch.equal(box_iou(a, b, offset=0.0), torchvision.ops.box_iou(a, b))  # unchanged on real boxes


def test_encode_of_an_empty_box_is_finite():
    """An empty GT (width 0 with offset 0) would give log(0) = -inf: its size counts as eps."""
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 0.0, 0.0]])
    gt = torch.tensor([[4.0, 4.0, 4.0, 12.0], [1.0, 1.0, 5.0, 5.0]])
    for offset in (0.0, 1.0):
        d = BoxCoder(offset=offset).encode(gt, anchors)
        assert torch.isfinite(d).all()
    d = BoxCoder(offset=0.0).encode(rand_boxes(10, seed=3), rand_boxes(10, seed=4))
    ref = torchvision.models.detection._utils.BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(
        rand_boxes(10, seed=3), rand_boxes(10, seed=4))
    torch.testing.assert_close(d, ref)
