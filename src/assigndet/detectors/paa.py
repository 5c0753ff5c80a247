"""PAA (kkhoot/PAA, ECCV 2020): probabilistic anchor assignment with IoU prediction, SPEC §3."""
from __future__ import annotations

from torch import Tensor

from ..assign.paa import paa_assign
from ..boxes import elementwise_iou
from ..losses import bce_sum, focal_loss_sum, reduce_mean, weighted_giou_sum
from ..variants import LossNormalizer, PAAVariant
from .assignment_stats import record_assignment
from .base import DenseDetector
from .common import gather_targets, zero_loss


class PAA(DenseDetector):
    """Focal loss / N_pos; IoU branch BCE / N_pos x 0.5; GIoU weighted by the IoU target / its sum x 1.3.

    ``cfg``: a ``PAAModelConfig``. Candidates are ranked by sqrt(p q) at inference (mmdetection:
    its PAA rules); score voting is a config switch.
    """

    sqrt_rank = True
    mmdet_rule = "paa"

    def assign(self, anchors: Tensor, num_per_level: list[int], targets: list[dict], logits: Tensor, deltas: Tensor) -> Tensor:
        """PAA assignment of every image -> (B, A), -1 background (no gradient: inputs detached)."""
        c = self.cfg
        return paa_assign(anchors, num_per_level, [t["boxes"] for t in targets], [t["labels"] for t in targets],
                                logits.detach(), deltas.detach(), topk=c.topk, iou_threshold=c.paa_iou_threshold,
                                offset=self.offset, variant=c.paa_variant)

    def compute_losses(self, logits, deltas, quality, anchors, num_per_level, targets) -> dict[str, Tensor]:
        c = self.cfg
        B, A, C = logits.shape
        matched = self.assign(anchors, num_per_level, targets, logits, deltas)  # (B, A)
        labels, gt_boxes = gather_targets(matched, targets, C)
        record_assignment(self, matched, anchors, gt_boxes, targets, num_per_level)  # assign/* statistics
        pos = matched >= 0
        # "local": per-process normalisers (PAA_minimal, SPEC §3.7); "global": averaged over processes
        mean = reduce_mean if c.loss_normalizer is LossNormalizer["global"] else (lambda x: x)
        n_pos = mean(pos.sum().to(logits.dtype)).clamp(min=1.0)
        n_cls = n_pos.clamp(min=float(B)) if c.paa_variant is PAAVariant.mmdet else n_pos  # mmdetection: max(#pos, #images)
        loss_cls = focal_loss_sum(logits.reshape(B * A, C), labels.reshape(-1), alpha=c.focal_alpha,
                                  gamma=c.focal_gamma) / n_cls
        anchors_pos = anchors.expand(B, A, 4)[pos]  # (P, 4)
        pred_boxes = self.coder.decode(deltas[pos], anchors_pos)  # (P, 4)
        target_boxes = self.coder.decode(self.coder.encode(gt_boxes[pos], anchors_pos), anchors_pos)  # (P, 4)
        iou_target = elementwise_iou(pred_boxes.detach(), target_boxes, offset=self.offset)  # (P,) IoU+1
        sum_iou = mean(iou_target.sum()).clamp(min=1e-6)
        loss_reg = weighted_giou_sum(pred_boxes, target_boxes, iou_target) / sum_iou * c.reg_loss_weight
        loss_iou = bce_sum(quality[pos], iou_target) / n_pos * c.quality_loss_weight
        return {"loss_cls": loss_cls, "loss_reg": loss_reg + zero_loss(deltas, quality), "loss_iou": loss_iou}
