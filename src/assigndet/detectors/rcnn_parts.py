"""Building blocks of the two-stage detectors (Faster R-CNN, PAA-RPN, IoU-Net).

torchvision provides the machinery; this file adds what the reference hosts do differently:

* :class:`FPN` — torchvision's ``FeaturePyramidNetwork`` + ``LastLevelMaxPool`` (P2–P6), optionally
  without conv biases (the side effect of the PAA_Faster-RCNN commit, SPEC §3.6 item 7).
* :func:`rpn_match` — the RPN's IoU matcher with mmdetection's (``MaxIoUAssigner``) or
  detectron2's low-quality rule.
* :class:`RPNHead` — torchvision's ``RPNHead`` with PAA's extra IoU conv.
* :class:`RPN` — torchvision's ``RegionProposalNetwork`` (sampler, coder, per-level top-k + NMS)
  with our anchors (mmdetection layout), L1 box loss, and PAA's re-assignment (SPEC §3.6).
* :class:`LevelRoIAlign` — RoIAlign (aligned, mmdetection's ``SingleRoIExtractor`` level rule).
* :func:`box_head` / :class:`RCNNHeads` — torchvision's ``TwoMLPHead`` + ``FastRCNNPredictor`` and
  ``RoIHeads`` (matching, sampling with GT proposals, per-class NMS) with mmdetection's losses;
  the box branch as functions of any ``RoIHeads`` (:func:`rcnn_box_losses`, :func:`rcnn_detect`),
  which IoU-Net's heads share.

Shape letters: B images, A anchors (all levels of one image), L levels, G ground truths,
R RoIs (all images), C foreground classes.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.rpn import RPNHead as _TVRPNHead
from torchvision.ops import FeaturePyramidNetwork, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..anchors import AnchorGenerator
from ..assign.max_iou import max_iou_match
from ..assign.paa import paa_first_stage_match, paa_partition
from ..boxes import box_iou, elementwise_iou
from ..config import RCNNConfig
from ..nn import flatten_levels
from ..ops.prroi_pool import map_roi_levels
from ..variants import Convention
from .common import gather_boxes

#: PAA_Faster-RCNN computes the RPN's IoU target with inclusive pixels (IoU⁺¹, SPEC §3.6 item 5).
PAA_RPN_IOU_OFFSET = 1.0


# ---------------------------------------------------------------------------------------------
# FPN P2-P6
# ---------------------------------------------------------------------------------------------


class FPN(nn.Module):
    """C2..C5 -> P2..P6 with torchvision's FPN; P6 = max-pool(P5, 1, stride 2) (SPEC §5.1)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, *, conv_bias: bool = True) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=LastLevelMaxPool())
        if not conv_bias:
            for m in self.fpn.modules():
                if isinstance(m, nn.Conv2d):
                    m.bias = None
        self.out_channels = out_channels

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        out = self.fpn(OrderedDict((f"p{i + 2}", f) for i, f in enumerate(feats)))
        return list(out.values())  # [P2, P3, P4, P5, P6]


# ---------------------------------------------------------------------------------------------
# RPN
# ---------------------------------------------------------------------------------------------


def rpn_match(iou: Tensor, high: float, low: float, *, low_quality: str = "mmdet") -> Tensor:
    """GT index per anchor from a (G, A) IoU matrix: -1 background, -2 ignore.

    :func:`~assigndet.assign.max_iou.max_iou_match` with the RPN's low-quality rule
    (``LowQuality`` or its spelling): ``"mmdet"`` (``MaxIoUAssigner``, ``min_pos_iou = low``,
    ``gt_max_assign_all``) or ``"detectron2"`` (and maskrcnn-benchmark, torchvision).
    """
    return max_iou_match(iou, high, low, low_quality, min_pos_iou=low)


class RPNHead(_TVRPNHead):
    """3x3 conv + ReLU shared over levels, 1x1 objectness and deltas (torchvision, N(0, 0.01) init);
    with ``iou_pred`` an extra 3x3 IoU conv on the shared feature (PAA_Faster-RCNN; PyTorch's default
    init, as the reference)."""

    def __init__(self, in_channels: int, num_anchors: int, *, iou_pred: bool = False) -> None:
        super().__init__(in_channels, num_anchors)
        self.iou_pred = nn.Conv2d(in_channels, num_anchors, 3, padding=1) if iou_pred else None

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor], Optional[list[Tensor]]]:
        logits, deltas, ious = [], [], []
        for feature in x:
            t = self.conv(feature)
            logits.append(self.cls_logits(t))  # (B, A, H, W)
            deltas.append(self.bbox_pred(t))  # (B, A*4, H, W)
            if self.iou_pred is not None:
                ious.append(self.iou_pred(t))  # (B, A, H, W)
        return logits, deltas, (ious if self.iou_pred is not None else None)


def paa_proposal_logit(objectness: Tensor, iou: Tensor) -> Tensor:
    """logit(sqrt(sigmoid(o) * sigmoid(i))), stable (PAA_Faster-RCNN's proposal score)."""
    log_p = -0.5 * (F.softplus(-objectness) + F.softplus(-iou))  # log sqrt(σ(o) σ(i)) <= 0
    one_minus_p = (-torch.expm1(log_p)).clamp(min=torch.finfo(log_p.dtype).tiny)
    return log_p - torch.log(one_minus_p)


class RPN(RegionProposalNetwork):
    """Region proposals on P2-P6 (torchvision's RPN with mmdetection's anchors and L1 loss).

    ``forward(features, image_sizes, targets)`` -> (proposals per image (N_i, 4), losses).
    With ``cfg.rpn_paa`` the labels come from PAA (SPEC §3.6, :meth:`paa_labels`) and an IoU
    branch is trained and folded into the proposal score.
    """

    def __init__(self, cfg: RCNNConfig, in_channels: int) -> None:
        anchors = AnchorGenerator(sizes=[cfg.rpn_anchor_scale * s for s in cfg.rpn_strides], strides=cfg.rpn_strides,
                                  aspect_ratios=cfg.rpn_aspect_ratios, style=Convention.mmdet)
        head = RPNHead(in_channels, anchors.num_anchors_per_location, iou_pred=cfg.rpn_paa)
        super().__init__(
            anchors, head, fg_iou_thresh=cfg.rpn_fg_iou_thresh, bg_iou_thresh=cfg.rpn_bg_iou_thresh,
            batch_size_per_image=cfg.rpn_batch_size_per_image, positive_fraction=cfg.rpn_positive_fraction,
            pre_nms_top_n=dict(training=cfg.rpn_pre_nms_top_n_train, testing=cfg.rpn_pre_nms_top_n_test),
            post_nms_top_n=dict(training=cfg.rpn_post_nms_top_n_train, testing=cfg.rpn_post_nms_top_n_test),
            nms_thresh=cfg.rpn_nms_thresh)
        self.cfg = cfg

    # -- the pieces ---------------------------------------------------------------------------
    def predict(self, features: list[Tensor]):
        """Head outputs flattened in the anchors' order: objectness (B, A), deltas (B, A, 4),
        IoU logits (B, A) or None; the anchors (A, 4) and their count per level."""
        logits, deltas, ious = self.head(features)
        anchors, num_per_level = self.anchor_generator([tuple(f.shape[-2:]) for f in features])
        objectness = flatten_levels(logits, 1)[..., 0]  # (B, A)
        deltas = flatten_levels(deltas, 4)  # (B, A, 4)
        iou = flatten_levels(ious, 1)[..., 0] if ious is not None else None  # (B, A)
        return objectness, deltas, iou, anchors, num_per_level

    def match(self, anchors: Tensor, targets: list[dict]) -> Tensor:
        """Per-image GT index of every anchor (B, A): -1 background, -2 ignore."""
        c = self.cfg
        out = []
        for t in targets:
            iou = box_iou(t["boxes"].to(anchors.dtype), anchors, offset=0.0)  # (G, A)
            out.append(rpn_match(iou, c.rpn_fg_iou_thresh, c.rpn_bg_iou_thresh, low_quality=c.rpn_low_quality))
        return torch.stack(out)

    @torch.no_grad()
    def paa_labels(self, objectness: Tensor, deltas: Tensor, anchors: Tensor, num_per_level: list[int],
                   targets: list[dict]) -> Tensor:
        """PAA in the RPN (SPEC §3.6), no gradient -> per-image GT index (B, A), -1 background.

        1. Match at IoU ``rpn_paa_iou_threshold`` (high = low, no ignore) with low-quality matches
           to the anchor's own argmax GT.
        2. Anchor score = BCE(objectness, matched) + L1 of the deltas (summed over 4) to the matched
           GT for matched anchors, +inf for the others.
        3. PAA's candidates, GMM and cut (:func:`~assigndet.assign.paa.paa_partition`,
           TOPK ``rpn_paa_topk``); every GT has label 1.
        """
        c = self.cfg
        B, A = objectness.shape
        # 1.
        matched = torch.stack([paa_first_stage_match(anchors, t["boxes"].to(anchors.dtype),
                                                     iou_threshold=c.rpn_paa_iou_threshold, offset=0.0)
                               for t in targets])  # (B, A)
        # 2.
        pos = matched >= 0  # (B, A)
        cls = F.binary_cross_entropy_with_logits(objectness, pos.to(objectness.dtype), reduction="none")  # (B, A)
        loc = torch.full_like(cls, math.inf)  # (B, A)
        if bool(pos.any()):
            gt = gather_boxes(matched, targets)  # (B, A, 4)
            anchors_b = anchors.expand(B, A, 4)
            target = self.box_coder.encode_single(gt[pos], anchors_b[pos])  # (P, 4)
            loc[pos] = (deltas[pos] - target).abs().sum(dim=1).to(loc.dtype)
        # 3.
        return paa_partition(cls + loc, matched, num_per_level, [len(t["boxes"]) for t in targets],
                             topk=c.rpn_paa_topk)

    def sample(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """torchvision's balanced sampler over (B, A) labels (1 / 0 / -1) -> pos, neg masks (B, A)."""
        pos, neg = self.fg_bg_sampler(list(labels))
        return torch.stack(pos).bool(), torch.stack(neg).bool()

    def losses(self, objectness: Tensor, deltas: Tensor, iou_logits: Optional[Tensor], anchors: Tensor,
               num_per_level: list[int], targets: list[dict]) -> dict[str, Tensor]:
        B, A = objectness.shape
        anchors_b = anchors.expand(B, A, 4)  # (B, A, 4)
        if not self.cfg.rpn_paa:
            # mmdetection: BCE over the sampled anchors, L1 over the sampled positives, both / #sampled
            matched = self.match(anchors, targets)  # (B, A)
            labels = torch.where(matched >= 0, 1.0, torch.where(matched == -1, 0.0, -1.0))  # (B, A)
            pos, neg = self.sample(labels)
            sampled = pos | neg
            norm = sampled.sum().clamp(min=1).to(objectness.dtype)
            gt = gather_boxes(matched, targets)  # (B, A, 4)
            target = self.box_coder.encode_single(gt[pos], anchors_b[pos])  # (P, 4)
            loss_cls = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled], reduction="sum") / norm
            loss_loc = F.l1_loss(deltas[pos], target, reduction="sum") / norm
            return {"loss_rpn_cls": loss_cls, "loss_rpn_loc": loss_loc}
        # PAA (SPEC §3.6 items 3-5)
        matched = self.paa_labels(objectness.detach(), deltas.detach(), anchors, num_per_level, targets)  # (B, A)
        labels = (matched >= 0).to(objectness.dtype)  # (B, A) no ignore
        pos, neg = self.sample(labels)
        sampled = pos | neg
        norm = float(self.cfg.rpn_batch_size_per_image * B)
        gt = gather_boxes(matched, targets)  # (B, A, 4)
        gt_pos, anchors_pos = gt[pos], anchors_b[pos]  # (P, 4)
        target = self.box_coder.encode_single(gt_pos, anchors_pos)  # (P, 4)
        pred_boxes = self.box_coder.decode_single(deltas[pos].detach(), anchors_pos)  # (P, 4)
        iou_target = elementwise_iou(pred_boxes, gt_pos, offset=PAA_RPN_IOU_OFFSET)  # (P,)
        loss_cls = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled], reduction="sum") / norm
        loss_loc = ((deltas[pos] - target).abs().sum(dim=1) * iou_target).sum() / norm
        num_pos = max(int(pos.sum()), 1)
        loss_iou = F.binary_cross_entropy_with_logits(iou_logits[pos], iou_target, reduction="sum") / num_pos
        return {"loss_rpn_cls": loss_cls, "loss_rpn_loc": loss_loc, "loss_rpn_iou": loss_iou}

    def forward(self, features: list[Tensor], image_sizes: list[tuple[int, int]],  # type: ignore[override]
                targets: Optional[list[dict]] = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        objectness, deltas, iou, anchors, num_per_level = self.predict(features)
        B, A = objectness.shape
        proposals = self.box_coder.decode_single(deltas.detach().reshape(-1, 4), anchors.repeat(B, 1)).view(B, A, 4)
        score = objectness.detach() if iou is None else paa_proposal_logit(objectness.detach(), iou.detach())
        boxes, _ = self.filter_proposals(proposals, score, image_sizes, num_per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("in training mode the RPN needs targets")
            losses = self.losses(objectness, deltas, iou, anchors, num_per_level, targets)
        return boxes, losses


# ---------------------------------------------------------------------------------------------
# RoI feature extraction and the box head
# ---------------------------------------------------------------------------------------------


class LevelRoIAlign(nn.Module):
    """RoIAlign (``aligned=True``) over FPN levels with mmdetection's level rule
    floor(log2(sqrt(w h) / 56 + 1e-6)) clamped to the levels (torchvision's ``MultiScaleRoIAlign``
    always pools with ``aligned=False``). Same call as :class:`~assigndet.ops.MultiScalePrRoIPool`:
    ``forward(features, boxes, image_shapes)`` -> (R, C, PH, PW)."""

    def __init__(self, strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 0, *,
                 finest_scale: float = 56.0) -> None:
        super().__init__()
        self.strides = [float(s) for s in strides]
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.finest_scale = finest_scale

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor],
                image_shapes: Optional[Sequence[tuple[int, int]]] = None) -> Tensor:
        maps = list(features)[: len(self.strides)]
        ref = maps[0]
        rois = torch.cat([torch.cat((torch.full_like(b[:, :1], i), b), dim=1) for i, b in enumerate(boxes)])  # (R, 5)
        out = ref.new_zeros((rois.shape[0], ref.shape[1], *self.output_size))  # (R, C, PH, PW)
        if rois.shape[0] == 0:
            return out
        levels = map_roi_levels(rois[:, 1:], len(maps), self.finest_scale)  # (R,)
        for lvl, (fmap, stride) in enumerate(zip(maps, self.strides)):
            idx = torch.nonzero(levels == lvl).squeeze(1)
            if idx.numel():
                out[idx] = roi_align(fmap, rois[idx].to(fmap.dtype), self.output_size, 1.0 / stride,
                                     self.sampling_ratio, aligned=True)
        return out


def box_head(in_channels: int, resolution: int, dim: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """mmdetection's Shared2FCBBoxHead from torchvision's parts: ``TwoMLPHead`` (Xavier-uniform FCs)
    and ``FastRCNNPredictor`` (C + 1 scores with background 0, class-specific deltas;
    N(0, 0.01) / N(0, 0.001) init)."""
    head = TwoMLPHead(in_channels * resolution * resolution, dim)
    for fc in (head.fc6, head.fc7):
        nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(fc.bias)
    predictor = FastRCNNPredictor(dim, num_classes + 1)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)
    return head, predictor


def roi_heads_args(cfg: RCNNConfig, *, pooler: nn.Module, in_channels: int, num_classes: int, score_thresh: float,
                   nms_thresh: float, detections_per_img: int) -> dict:
    """The arguments of torchvision's ``RoIHeads`` for the box branch of ``model.rcnn`` (box head of
    :func:`box_head` on ``pooler``'s features, matching, sampling, final-detection settings)."""
    head, predictor = box_head(in_channels, cfg.roi_output_size, cfg.box_head_dim, num_classes)
    return dict(box_roi_pool=pooler, box_head=head, box_predictor=predictor, fg_iou_thresh=cfg.box_fg_iou_thresh,
                bg_iou_thresh=cfg.box_bg_iou_thresh, batch_size_per_image=cfg.box_batch_size_per_image,
                positive_fraction=cfg.box_positive_fraction, bbox_reg_weights=tuple(cfg.box_reg_weights),
                score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img)


def rcnn_box_forward(heads: RoIHeads, features: list[Tensor], boxes: list[Tensor], image_sizes) -> tuple[Tensor, Tensor]:
    """Class logits (R, C + 1) and class-specific deltas (R, (C + 1) * 4) of per-image boxes."""
    x = heads.box_head(heads.box_roi_pool(features, boxes, image_sizes))
    return heads.box_predictor(x)


def rcnn_box_losses(heads: RoIHeads, features: list[Tensor], proposals: list[Tensor], image_sizes,
                    targets: list[dict]) -> dict[str, Tensor]:
    """Sample 512 RoIs/image (25 % positive, GT boxes added); CE mean + L1 sum / #sampled.
    ``targets`` carry torchvision's labels (1..C, 0 = background)."""
    proposals, _, labels, regression_targets = heads.select_training_samples(proposals, targets)
    class_logits, box_regression = rcnn_box_forward(heads, features, proposals, image_sizes)
    labels = torch.cat(labels)  # (R,)
    regression_targets = torch.cat(regression_targets)  # (R, 4)
    loss_cls = F.cross_entropy(class_logits, labels)
    pos = torch.nonzero(labels > 0).squeeze(1)  # (P,)
    deltas = box_regression.reshape(len(labels), -1, 4)[pos, labels[pos]]  # (P, 4)
    loss_bbox = F.l1_loss(deltas, regression_targets[pos], reduction="sum") / max(labels.numel(), 1)
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}


def rcnn_detect(heads: RoIHeads, features: list[Tensor], proposals: list[Tensor], image_sizes) -> list[dict]:
    """Softmax, class-specific decoding, clip, score > thresh, per-class NMS, top k; labels back to
    0-based (-1). Differentiable in the scores: the caller picks the grad mode (the detector runs it
    under no_grad unless an input image requires grad, as torchvision keeps the graph)."""
    class_logits, box_regression = rcnn_box_forward(heads, features, proposals, image_sizes)
    boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals, image_sizes)
    return [dict(boxes=b, scores=s, labels=lab - 1) for b, s, lab in zip(boxes, scores, labels)]


class RCNNHeads(RoIHeads):
    """torchvision's ``RoIHeads`` (box branch only) with mmdetection's L1 box loss.

    Labels here are torchvision's: 0 background, 1..C the classes (the detector shifts them).
    """

    def __init__(self, cfg: RCNNConfig, *, pooler: nn.Module, in_channels: int, num_classes: int,
                 score_thresh: float, nms_thresh: float, detections_per_img: int) -> None:
        super().__init__(**roi_heads_args(cfg, pooler=pooler, in_channels=in_channels, num_classes=num_classes,
                                          score_thresh=score_thresh, nms_thresh=nms_thresh,
                                          detections_per_img=detections_per_img))
        self.num_classes = num_classes

    def box_forward(self, features: list[Tensor], boxes: list[Tensor], image_sizes) -> tuple[Tensor, Tensor]:
        return rcnn_box_forward(self, features, boxes, image_sizes)

    def losses(self, features: list[Tensor], proposals: list[Tensor], image_sizes,
               targets: list[dict]) -> dict[str, Tensor]:
        return rcnn_box_losses(self, features, proposals, image_sizes, targets)

    def detect(self, features: list[Tensor], proposals: list[Tensor], image_sizes) -> list[dict]:
        return rcnn_detect(self, features, proposals, image_sizes)
