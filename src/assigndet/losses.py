"""Loss primitives and cross-process normalisers (SPEC §1.7)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from .boxes import giou_loss

__all__ = ["reduce_mean", "focal_loss_sum", "giou_loss", "weighted_giou_sum", "bce_sum", "centerness_target"]


def reduce_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over processes (identity without torch.distributed); no host sync."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x


def focal_loss_sum(logits: Tensor, labels: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss summed over anchors x classes.

    logits (N, C); labels (N,) int64 with C = background (0-based classes); -1 = ignore.
    """
    return focal_loss_per_anchor(logits, labels, alpha=alpha, gamma=gamma).sum()


def focal_loss_per_anchor(logits: Tensor, labels: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss summed over classes, per anchor -> (N,); labels as in :func:`focal_loss_sum`."""
    num_classes = logits.shape[1]
    onehot = F.one_hot(labels.clamp(min=0), num_classes + 1)[:, :num_classes].to(logits.dtype)  # (N, C)
    loss = sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma, reduction="none").sum(dim=1)  # (N,)
    return torch.where(labels >= 0, loss, torch.zeros_like(loss))  # ignore rows contribute nothing


def weighted_giou_sum(pred_boxes: Tensor, target_boxes: Tensor, weights: Tensor | None = None) -> Tensor:
    """Sum of (1 - GIoU) over rows, optionally weighted."""
    loss = giou_loss(pred_boxes, target_boxes)
    if weights is not None:
        loss = loss * weights
    return loss.sum()


def bce_sum(logits: Tensor, targets: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def centerness_target(anchor_centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b)) of anchor centres (N, 2) in boxes (N, 4)."""
    l = anchor_centers[:, 0] - gt_boxes[:, 0]
    t = anchor_centers[:, 1] - gt_boxes[:, 1]
    r = gt_boxes[:, 2] - anchor_centers[:, 0]
    b = gt_boxes[:, 3] - anchor_centers[:, 1]
    lr = torch.stack((l, r), 1)
    tb = torch.stack((t, b), 1)
    return torch.sqrt((lr.amin(1) / lr.amax(1)) * (tb.amin(1) / tb.amax(1)))
