"""ATSS (sfzhang15/ATSS): adaptive training sample selection with a centerness branch, SPEC §2."""
from __future__ import annotations

import torch
from torch import Tensor

from ..assign import atss_assign
from ..boxes import box_centers
from ..losses import bce_sum, centerness_target, focal_loss_sum, reduce_mean, weighted_giou_sum
from .assignment_stats import record_assignment
from .base import DenseDetector
from .common import atss_anchors_per_location, gather_targets, zero_loss


class ATSS(DenseDetector):
    """Focal loss / N_pos; GIoU weighted by the centerness target / sum of it, x2; centerness BCE / N_pos.

    ``cfg``: an ``ATSSModelConfig``. Inference ranks candidates by p q (mmdetection: its ATSS rules).
    """

    sqrt_rank = False
    mmdet_rule = "atss"

    def assign(self, anchors: Tensor, num_per_level: list[int], targets: list[dict]) -> Tensor:
        """Matched GT index per anchor for every image -> (B, A), -1 background."""
        a = atss_anchors_per_location(self.cfg, self.anchor_generator.num_anchors_per_location)
        return torch.stack([
            atss_assign(anchors, num_per_level, t["boxes"], topk=self.cfg.topk, offset=self.offset,
                        num_anchors_per_location=a)
            for t in targets])

    def compute_losses(self, logits, deltas, quality, anchors, num_per_level, targets) -> dict[str, Tensor]:
        c = self.cfg
        B, A, C = logits.shape
        matched = self.assign(anchors, num_per_level, targets)  # (B, A)
        labels, gt_boxes = gather_targets(matched, targets, C)  # (B, A), (B, A, 4)
        record_assignment(self, matched, anchors, gt_boxes, targets, num_per_level)  # assign/* statistics
        pos = matched >= 0  # (B, A)
        num_pos = reduce_mean(pos.sum().to(logits.dtype))
        n_pos = num_pos.clamp(min=1.0)
        loss_cls = focal_loss_sum(logits.reshape(B * A, C), labels.reshape(-1), alpha=c.focal_alpha, gamma=c.focal_gamma) / n_pos
        anchors_pos = anchors.expand(B, A, 4)[pos]  # (P, 4)
        gt_pos = gt_boxes[pos]  # (P, 4)
        ctr = centerness_target(box_centers(anchors_pos), gt_pos)  # (P,)
        pred_boxes = self.coder.decode(deltas[pos], anchors_pos)  # (P, 4)
        sum_ctr = reduce_mean(ctr.sum()).clamp(min=1e-6)
        loss_reg = weighted_giou_sum(pred_boxes, gt_pos, ctr) / sum_ctr * c.reg_loss_weight
        loss_ctr = bce_sum(quality[pos], ctr) / n_pos * c.quality_loss_weight
        # keep every output in the graph even without positives (DDP needs all gradients)
        z = zero_loss(deltas, quality)
        return {"loss_cls": loss_cls, "loss_reg": loss_reg + z, "loss_centerness": loss_ctr}
