"""Pure box maths with an explicit pixel convention.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels. The maskrcnn-benchmark family counts pixels
inclusively ("+1": width = x2 - x1 + 1); modern code does not. Every function whose result
depends on that takes ``offset``: 1.0 reproduces the original repositories, 0.0 mmdetection and
torchvision. The exceptions of SPEC §1.1 (GIoU loss, centerness, centre distances, centre-inside
test) never use the offset.

Shape letters: N, M boxes; A anchors; G ground truths.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

#: Upper clamp of the log-scale deltas in decoding (maskrcnn-benchmark's ``bbox_xform_clip``).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def upcast(t: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32, other dtypes unchanged (torchvision's ``_upcast``): areas and
    products of half-precision coordinates overflow (65504) or lose every digit."""
    return t.float() if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64) else t


def _divide(inter: Tensor, union: Tensor) -> Tensor:
    """inter / union, 0 where the union is 0 (two empty boxes; torchvision gives NaN there)."""
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny if union.is_floating_point() else 1)


def box_area(boxes: Tensor, *, offset: float = 1.0) -> Tensor:
    """Area of (N, 4) boxes -> (N,), with width = x2 - x1 + offset (half precision computed and
    returned in float32, as torchvision)."""
    boxes = upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)


def box_iou(boxes1: Tensor, boxes2: Tensor, *, offset: float = 1.0) -> Tensor:
    """Pairwise IoU (N, 4) x (M, 4) -> (N, M), in the original's order of operations.

    With ``offset=1`` this is maskrcnn-benchmark's ``boxlist_iou`` bit for bit; with ``offset=0``
    it equals ``torchvision.ops.box_iou``. float16 / bfloat16 boxes are computed in float32 and give
    float32 (torchvision's rule); a pair of empty boxes (union 0) has IoU 0, not NaN.
    """
    boxes1, boxes2 = upcast(boxes1), upcast(boxes2)
    area1 = box_area(boxes1, offset=offset)  # (N,)
    area2 = box_area(boxes2, offset=offset)  # (M,)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (rb - lt + offset).clamp(min=0)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    return _divide(inter, area1[:, None] + area2[None, :] - inter)


def elementwise_iou(boxes1: Tensor, boxes2: Tensor, *, offset: float = 1.0) -> Tensor:
    """IoU of matching rows (N, 4), (N, 4) -> (N,); half precision and empty pairs as :func:`box_iou`."""
    boxes1, boxes2 = upcast(boxes1), upcast(boxes2)
    area1 = box_area(boxes1, offset=offset)
    area2 = box_area(boxes2, offset=offset)
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt + offset).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return _divide(inter, area1 + area2 - inter)


def box_centers(boxes: Tensor) -> Tensor:
    """Centres ((x1 + x2) / 2, (y1 + y2) / 2) of (N, 4) boxes -> (N, 2); no offset (SPEC §1.1)."""
    return torch.stack(((boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2), dim=1)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int], *, offset: float = 1.0) -> Tensor:
    """Clip (N, 4) boxes to an image of ``(H, W)``: x in [0, W - offset], y in [0, H - offset]."""
    h, w = image_size
    x = boxes[:, 0::2].clamp(min=0, max=w - offset)
    y = boxes[:, 1::2].clamp(min=0, max=h - offset)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def flip_boxes(boxes: Tensor, image_width: int, *, offset: float = 1.0) -> Tensor:
    """Horizontal flip in an image of width W: x1' = W - x2 - offset, x2' = W - x1 - offset."""
    out = boxes.clone()
    out[:, 0] = image_width - boxes[:, 2] - offset
    out[:, 2] = image_width - boxes[:, 0] - offset
    return out


def center_inside(points: Tensor, boxes: Tensor, *, margin: float = 0.01) -> Tensor:
    """Whether points (A, 2) lie inside boxes (G, 4) by strictly more than ``margin`` -> (A, G)."""
    l = points[:, None, 0] - boxes[None, :, 0]
    t = points[:, None, 1] - boxes[None, :, 1]
    r = boxes[None, :, 2] - points[:, None, 0]
    b = boxes[None, :, 3] - points[:, None, 1]
    return torch.stack((l, t, r, b), dim=2).amin(dim=2) > margin


def _positive(size: Tensor) -> Tensor:
    """Widths / heights floored at the dtype's eps (bit-identical for every non-empty box)."""
    return size.clamp(min=torch.finfo(size.dtype).eps)


class BoxCoder:
    """The (dx, dy, dw, dh) coder of SPEC §1.6 with weights (10, 10, 5, 5) by default.

    ``offset=1`` is ATSS/PAA's coder (inclusive widths); ``offset=0`` mmdetection's
    ``DeltaXYWHBBoxCoder`` with stds 1/weights (its symmetric clamp is ``symmetric_clamp=True``).
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        *,
        offset: float = 1.0,
        clip: float = BBOX_XFORM_CLIP,
        symmetric_clamp: bool = False,
    ) -> None:
        self.weights = weights
        self.offset = offset
        self.clip = clip
        self.symmetric_clamp = symmetric_clamp

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas (N, 4) that map anchors (N, 4) onto gt_boxes (N, 4). A width or height below
        the dtype's eps (an empty box) counts as eps, so the deltas stay finite (no log 0)."""
        wx, wy, ww, wh = self.weights
        o = self.offset
        aw = anchors[:, 2] - anchors[:, 0] + o
        ah = anchors[:, 3] - anchors[:, 1] + o
        ax = (anchors[:, 2] + anchors[:, 0]) / 2
        ay = (anchors[:, 3] + anchors[:, 1]) / 2
        gw = gt_boxes[:, 2] - gt_boxes[:, 0] + o
        gh = gt_boxes[:, 3] - gt_boxes[:, 1] + o
        gx = (gt_boxes[:, 2] + gt_boxes[:, 0]) / 2
        gy = (gt_boxes[:, 3] + gt_boxes[:, 1]) / 2
        aw, ah, gw, gh = (_positive(v) for v in (aw, ah, gw, gh))
        return torch.stack(
            (wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * torch.log(gw / aw), wh * torch.log(gh / ah)),
            dim=1,
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes (N, 4) from deltas (N, 4) relative to anchors (N, 4)."""
        wx, wy, ww, wh = self.weights
        o = self.offset
        anchors = anchors.to(deltas.dtype)
        aw = anchors[:, 2] - anchors[:, 0] + o
        ah = anchors[:, 3] - anchors[:, 1] + o
        ax = (anchors[:, 2] + anchors[:, 0]) / 2
        ay = (anchors[:, 3] + anchors[:, 1]) / 2
        dx = deltas[:, 0] / wx
        dy = deltas[:, 1] / wy
        lo = -self.clip if self.symmetric_clamp else None
        dw = torch.clamp(deltas[:, 2] / ww, min=lo, max=self.clip)
        dh = torch.clamp(deltas[:, 3] / wh, min=lo, max=self.clip)
        cx = dx * aw + ax
        cy = dy * ah + ay
        w = torch.exp(dw) * aw
        h = torch.exp(dh) * ah
        return torch.stack(
            (cx - 0.5 * (w - o), cy - 0.5 * (h - o), cx + 0.5 * (w - o), cy + 0.5 * (h - o)), dim=1
        )


def giou_loss(pred: Tensor, target: Tensor, *, eps: float = 1e-7) -> Tensor:
    """1 - GIoU per row of decoded boxes (N, 4), as ATSS/PAA compute it (no +1, SPEC §1.7).

    The prediction is made well-formed (x2 >= x1, y2 >= y1); the target is used as is. Half
    precision is computed and returned in float32 (torchvision's ``generalized_box_iou_loss``).
    """
    pred, target = upcast(pred), upcast(target)
    px1, py1 = pred[:, 0], pred[:, 1]
    px2 = torch.max(pred[:, 0], pred[:, 2])
    py2 = torch.max(pred[:, 1], pred[:, 3])
    tx1, ty1, tx2, ty2 = target.unbind(dim=1)
    area_p = (px2 - px1) * (py2 - py1)
    area_t = (tx2 - tx1) * (ty2 - ty1)
    iw = torch.min(px2, tx2) - torch.max(px1, tx1)
    ih = torch.min(py2, ty2) - torch.max(py1, ty1)
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
    enclose = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (torch.max(py2, ty2) - torch.min(py1, ty1)) + eps
    union = area_p + area_t - inter + eps
    giou = inter / union - (enclose - union) / enclose
    return 1 - giou
