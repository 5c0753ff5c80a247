"""Dynamic ATSS (arXiv 2201.09396): ATSS whose assignment uses predicted + anchor IoUs and whose
third branch is trained as an IoU predictor (SPEC §4)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..assign import dynamic_atss_assign
from ..losses import bce_sum, quality_focal_loss_sum, reduce_mean, weighted_giou_sum
from .assignment_stats import record_assignment
from .base import DenseDetector
from .common import atss_anchors_per_location, gather_targets, zero_loss


class DynamicATSS(DenseDetector):
    """Dynamic ATSS: the ``quality`` branch (``centerness`` in the original's state dict) predicts IoU.

    ``cfg``: a ``DynamicATSSModelConfig``. Inference is ATSS's: candidates ranked by p q
    (mmdetection: its ATSS rules).
    """

    sqrt_rank = False
    mmdet_rule = "atss"

    def compute_losses(self, logits, deltas, quality, anchors, num_per_level, targets) -> dict[str, Tensor]:
        c = self.cfg
        B, A, C = logits.shape
        pred_all = self.coder.decode(deltas.detach().reshape(-1, 4), anchors.repeat(B, 1)).view(B, A, 4)  # (B, A, 4)
        a = atss_anchors_per_location(c, self.anchor_generator.num_anchors_per_location)
        matched, ious = zip(*[
            dynamic_atss_assign(anchors, num_per_level, t["boxes"], pred_all[i], topk=c.topk, offset=self.offset,
                                num_anchors_per_location=a)
            for i, t in enumerate(targets)])
        matched, ious = torch.stack(matched), torch.stack(ious)  # (B, A), (B, A)
        labels, gt_boxes = gather_targets(matched, targets, C)
        record_assignment(self, matched, anchors, gt_boxes, targets, num_per_level)  # assign/* statistics
        pos = matched >= 0
        n_pos = reduce_mean(pos.sum().to(logits.dtype)).clamp(min=1.0)
        q_star = torch.where(pos, ious, torch.zeros_like(ious))  # (B, A)
        loss_cls = quality_focal_loss_sum(logits.reshape(B * A, C), labels.reshape(-1), q_star.reshape(-1),
                                          gamma=c.focal_gamma) / n_pos
        qp = ious[pos]  # (P,)
        pred_boxes = self.coder.decode(deltas[pos], anchors.expand(B, A, 4)[pos])
        sum_q = reduce_mean(qp.sum()).clamp(min=1e-6)
        loss_reg = weighted_giou_sum(pred_boxes, gt_boxes[pos], qp) / sum_q * c.reg_loss_weight
        loss_iou = bce_sum(quality[pos], qp) / n_pos * c.quality_loss_weight
        return {"loss_cls": loss_cls, "loss_reg": loss_reg + zero_loss(deltas, quality), "loss_iou": loss_iou}
