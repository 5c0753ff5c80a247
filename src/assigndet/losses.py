"""Loss primitives and cross-process normalisers (SPEC §1.7)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .boxes import giou_loss

__all__ = ["reduce_mean", "focal_loss_sum", "focal_loss_per_anchor", "quality_focal_loss_sum", "giou_loss", "weighted_giou_sum", "bce_sum", "centerness_target"]


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
    """Sigmoid focal loss summed over classes, per anchor -> (N,): the one focal loss (training
    losses and PAA's anchor scores).

    ``labels`` (N,) int64: class c in [0, C) -> positive term for channel c and negative terms for
    the others; C -> background (negative terms only); -1 -> ignore (0). Every channel's negative
    term (1 - alpha) p^gamma softplus(z) is summed, then the GT channel's is swapped for its positive
    term alpha (1 - p)^gamma softplus(-z): no (N, C) one-hot. Uses -log p = softplus(-z) and
    -log(1 - p) = softplus(z), the stable form of the reference CUDA kernel. Differentiable.
    """
    num_classes = logits.shape[1]
    p = torch.sigmoid(logits)  # (N, C)
    neg = (p.pow(gamma) * F.softplus(logits)).sum(dim=1) * (1 - alpha)  # (N,) every channel negative
    is_pos = (labels >= 0) & (labels < num_classes)  # (N,)
    z = logits.gather(1, labels.clamp(min=0, max=num_classes - 1)[:, None]).squeeze(1)  # (N,) GT logit
    pz = torch.sigmoid(z)
    pos_term = alpha * (1 - pz).pow(gamma) * F.softplus(-z)
    neg_term = (1 - alpha) * pz.pow(gamma) * F.softplus(z)
    out = neg + torch.where(is_pos, pos_term - neg_term, torch.zeros_like(neg))
    return torch.where(labels >= 0, out, torch.zeros_like(out))  # ignore rows contribute nothing


def quality_focal_loss_sum(logits: Tensor, labels: Tensor, quality: Tensor, *, gamma: float = 2.0) -> Tensor:
    """The quality-focal-loss variant of Dynamic ATSS, summed (SPEC §4.2).

    logits (N, C); labels (N,) with C = background; quality (N,) the IoU target q* of positives.
    Positive class of a positive: |q* - p|^gamma * BCE(p, q*); every other pair: p^gamma * BCE(p, 0).
    No alpha; computed from logits for stability.
    """
    num_classes = logits.shape[1]
    onehot = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(logits.dtype)  # (N, C)
    target = onehot * quality[:, None].to(logits.dtype)  # (N, C)
    p = logits.sigmoid()
    weight = (target - p).abs().pow(gamma)
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum()


def weighted_giou_sum(pred_boxes: Tensor, target_boxes: Tensor, weights: Tensor | None = None) -> Tensor:
    """Sum of (1 - GIoU) over rows, optionally weighted."""
    loss = giou_loss(pred_boxes, target_boxes)
    if weights is not None:
        loss = loss * weights
    return loss.sum()


def bce_sum(logits: Tensor, targets: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def centerness_target(anchor_centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b)) of anchor centres (N, 2) in boxes (N, 4).

    Defined everywhere (no NaN): a centre on or outside the box's edge, or an empty box, gives 0
    (the assigners only pass centres strictly inside, where this is the original's formula)."""
    l = anchor_centers[:, 0] - gt_boxes[:, 0]
    t = anchor_centers[:, 1] - gt_boxes[:, 1]
    r = gt_boxes[:, 2] - anchor_centers[:, 0]
    b = gt_boxes[:, 3] - anchor_centers[:, 1]
    lr = torch.stack((l, r), 1)  # (N, 2)
    tb = torch.stack((t, b), 1)  # (N, 2)
    tiny = torch.finfo(lr.dtype).tiny
    ratio_x = lr.amin(1).clamp(min=0) / lr.amax(1).clamp(min=tiny)  # (N,) in [0, 1]
    ratio_y = tb.amin(1).clamp(min=0) / tb.amax(1).clamp(min=tiny)
    return torch.sqrt(ratio_x * ratio_y)
