"""Shared machinery of the dense detectors (ATSS, PAA, Dynamic ATSS): input checks, transform,
backbone + FPN + head, anchors, inference; each detector adds its assignment and losses
(``compute_losses``) and says how it ranks candidates at inference (``sqrt_rank``, ``mmdet_rule``)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..anchors import AnchorGenerator
from ..boxes import BoxCoder
from ..nn import DenseHead, RetinaFPN
from ..postprocess import dense_postprocess, mmdet_postprocess
from ..variants import Postprocess
from .common import (TargetError, build_body, build_transform, check_images, check_targets, graph_to_images,
                     rescale_boxes, zero_loss)
from .tta import tta_forward

#: P3-P7
NUM_LEVELS = 5


class DenseDetector(nn.Module):
    """Backbone (ResNet) + FPN P3-P7 + :class:`DenseHead` + anchors, torchvision's contract:
    ``model(images, targets)`` -> dict of losses in train mode, ``model(images)`` -> list of
    dict(boxes, scores, labels) in eval mode, boxes in the input images' pixels.

    ``cfg``: the dense model config of the architecture (``ATSSModelConfig``, ``PAAModelConfig``,
    ``DynamicATSSModelConfig``).
    """

    #: each detector states how inference ranks candidates: by sqrt(p q) (PAA) or p q (ATSS)
    sqrt_rank: bool
    #: and which of mmdetection's inference rules it follows with ``model.postprocess=mmdet``
    mmdet_rule: str

    def __init__(self, cfg) -> None:
        super().__init__()
        if len(cfg.anchor_strides) != NUM_LEVELS:
            raise ValueError("the dense detectors use five pyramid levels P3-P7 (anchor_strides of length 5)")
        self.cfg = cfg
        self.body = build_body(cfg.backbone, fast=cfg.fast_path)
        self.fpn = RetinaFPN(self.body.out_channels[1:], cfg.fpn_channels, relu_before_p7=cfg.fpn_relu_before_p7)
        self.anchor_generator = AnchorGenerator(
            sizes=cfg.anchor_sizes, strides=cfg.anchor_strides, aspect_ratios=cfg.anchor_aspect_ratios,
            scales_per_octave=cfg.anchor_scales_per_octave, style=cfg.anchor_style)
        self.head = DenseHead(in_channels=cfg.fpn_channels, num_classes=cfg.num_classes,
                              num_anchors=self.anchor_generator.num_anchors_per_location, num_convs=cfg.head_convs,
                              num_levels=NUM_LEVELS, prior_prob=cfg.prior_prob,
                              conv_bias=cfg.head_conv_bias, norm=cfg.head_norm, dcn_last=cfg.head_dcn,
                              fast=cfg.fast_path)
        self.transform = build_transform(cfg.input)
        self.coder = BoxCoder(offset=cfg.offset, symmetric_clamp=cfg.coder_symmetric_clamp)
        self.offset = cfg.offset

    # -- pieces ---------------------------------------------------------------------------------
    def features(self, batch: Tensor) -> list[Tensor]:
        return self.fpn(self.body(batch)[1:])

    def anchors(self, features: list[Tensor]) -> tuple[Tensor, list[int]]:
        return self.anchor_generator([tuple(f.shape[-2:]) for f in features])

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        check_images(images)
        check_targets(targets, len(images), self.cfg.num_classes, training=self.training)
        if not self.training and self.cfg.tta.enabled:
            return tta_forward(self, images)
        orig_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, sizes, targets = self.transform(images, targets)
        feats = self.features(batch)
        logits, deltas, quality = self.head(feats)  # (B, A, C), (B, A, 4), (B, A)
        anchors, num_per_level = self.anchors(feats)
        if self.training:
            return self.compute_losses(logits, deltas, quality, anchors, num_per_level, targets)
        with torch.set_grad_enabled(graph_to_images(images)):  # scores keep a graph to images requiring grad
            return self.postprocess(logits, deltas, quality, anchors, num_per_level, sizes, orig_sizes)

    def compute_losses(self, logits, deltas, quality, anchors, num_per_level, targets) -> dict[str, Tensor]:
        raise NotImplementedError

    def postprocess(self, logits, deltas, quality, anchors, num_per_level, sizes, orig_sizes) -> list[dict]:
        """Detections per image in the input images' pixels (``orig_sizes``); differentiable in the
        scores (the caller chooses the grad mode: :meth:`forward` runs it under no_grad unless an
        image requires grad)."""
        c = self.cfg
        results = []
        for i, (size, orig) in enumerate(zip(sizes, orig_sizes)):
            if c.postprocess is Postprocess.mmdet:  # boxes come back in the original image's pixels
                results.append(mmdet_postprocess(
                    logits[i], deltas[i], quality[i], anchors, num_per_level, size, orig, self.coder,
                    method=self.mmdet_rule, score_thresh=c.score_thresh,
                    pre_nms_top_n=c.pre_nms_top_n, nms_thresh=c.nms_thresh, detections_per_img=c.detections_per_img,
                    score_voting=c.score_voting, score_voting_sigma=c.score_voting_sigma))
                continue
            det = dense_postprocess(
                logits[i], deltas[i], quality[i], anchors, num_per_level, size, self.coder,
                score_thresh=c.score_thresh, pre_nms_top_n=c.pre_nms_top_n, nms_thresh=c.nms_thresh,
                detections_per_img=c.detections_per_img, sqrt_rank=self.sqrt_rank, offset=self.offset,
                score_voting=c.score_voting, score_voting_sigma=c.score_voting_sigma)
            det["boxes"] = rescale_boxes(det["boxes"], size, orig)
            results.append(det)
        return results


__all__ = ["DenseDetector", "NUM_LEVELS", "TargetError", "check_targets", "zero_loss"]
