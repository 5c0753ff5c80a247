"""ATSS (sfzhang15/ATSS): adaptive training sample selection with a centerness branch, SPEC §2."""
from __future__ import annotations

import torch
from torch import Tensor

from ..assign import atss_assign
from ..boxes import box_centers
from ..losses import bce_sum, centerness_target, focal_loss_sum, reduce_mean, weighted_giou_sum
from .base import DenseDetector, zero_loss


class ATSS(DenseDetector):
    """Focal loss / N_pos; GIoU weighted by the centerness target / sum of it, x2; centerness BCE / N_pos."""

    def assign(self, anchors: Tensor, num_per_level: list[int], targets: list[dict], deltas: Tensor) -> Tensor:
        """Matched GT index per anchor for every image -> (B, A), -1 background."""
        a = self.anchor_generator.num_anchors_per_location
        return torch.stack([
            atss_assign(anchors, num_per_level, t["boxes"], topk=self.cfg.topk, offset=self.offset,
                        num_anchors_per_location=a if self.cfg.anchor_style == "mrcnn" else 1)
            for t in targets])

    def compute_losses(self, logits, deltas, quality, anchors, num_per_level, targets) -> dict[str, Tensor]:
        c = self.cfg
        B, A, C = logits.shape
        matched = self.assign(anchors, num_per_level, targets, deltas)  # (B, A)
        labels, gt_boxes = gather_targets(matched, targets, C)  # (B, A), (B, A, 4)
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


def gather_targets(matched: Tensor, targets: list[dict], num_classes: int) -> tuple[Tensor, Tensor]:
    """Class label per anchor (num_classes = background) and matched GT box per anchor
    (zeros for background) from per-image matches (B, A)."""
    B, A = matched.shape
    sizes = [len(t["boxes"]) for t in targets]
    dev = matched.device
    all_boxes = torch.cat([t["boxes"].to(dev, torch.float32) for t in targets] + [torch.zeros(1, 4, device=dev)])
    all_labels = torch.cat([t["labels"].to(dev) for t in targets] + [torch.full((1,), num_classes, device=dev, dtype=torch.int64)])
    starts = torch.tensor([0] + sizes[:-1], device=dev).cumsum(0)  # (B,)
    dummy = all_boxes.shape[0] - 1
    flat = torch.where(matched >= 0, matched + starts[:, None], torch.full_like(matched, dummy))  # (B, A)
    return all_labels[flat], all_boxes[flat]
