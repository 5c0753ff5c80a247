"""Faster R-CNN R-50-FPN (SPEC §5.1) and Faster R-CNN with PAA in the RPN (SPEC §3.6).

Host conventions (mmdetection v2.14, the IoU-Net reproduction's baseline): no +1 pixel, a
torchvision-style ResNet whose BatchNorm layers stay in eval mode (``model.rcnn.norm_eval``),
stem + layer1 frozen, RGB mean/std input, FPN P2–P6 (P6 = max-pool), RPN anchors 8·stride ×
{0.5, 1, 2}, RoIAlign 7×7 on P2–P5, Shared2FC 1024 box head, 512 RoIs/image at 25 % positive.

The pieces are torchvision's (``RegionProposalNetwork``, ``RoIHeads``, ``TwoMLPHead``,
``FastRCNNPredictor``, ``FeaturePyramidNetwork``) adapted in :mod:`.rcnn_parts`; the input pipeline
is the library's (``ResNetBody`` + ``ImageTransform``), shared with the dense detectors.
torchvision's heads use label 0 for background: targets are shifted by +1 on the way in and
detections by -1 on the way out, so the model speaks 0-based labels like every assigndet detector.

``model(images, targets)`` -> losses (``loss_rpn_cls``, ``loss_rpn_loc`` [, ``loss_rpn_iou``],
``loss_cls``, ``loss_bbox``) in train mode; ``model(images)`` -> list of dict(boxes, scores, labels)
in the input images' pixels in eval mode.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import MultiScalePrRoIPool
from ..variants import RoIPool
from .common import build_body, build_transform, check_images, check_targets, graph_to_images, to_input_pixels
from .rcnn_parts import FPN, RPN, LevelRoIAlign, RCNNHeads

#: The RoI heads pool P2-P5.
ROI_STRIDES = (4, 8, 16, 32)


def build_pooler(cfg) -> nn.Module:
    """The RoI feature extractor named by ``model.rcnn.roi_pool`` over P2-P5."""
    r = cfg.rcnn
    if r.roi_pool is RoIPool.prroi:
        return MultiScalePrRoIPool(len(ROI_STRIDES), r.roi_output_size, ROI_STRIDES)
    return LevelRoIAlign(ROI_STRIDES, r.roi_output_size, r.roi_sampling_ratio)


class FasterRCNN(nn.Module):
    """Backbone + FPN P2-P6 + RPN (optionally PAA-assigned) + RoI box head.

    ``cfg``: a ``FasterRCNNModelConfig`` (or, through :class:`~.iounet.IoUNet`, an ``IoUNetModelConfig``).
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg
        r = cfg.rcnn
        if len(r.rpn_strides) != 5:
            raise ValueError("the two-stage detectors use five pyramid levels P2-P6 (model.rcnn.rpn_strides)")
        self.body = build_body(cfg.backbone, fast=cfg.fast_path)
        self.fpn = FPN(self.body.out_channels, cfg.fpn_channels, conv_bias=r.fpn_conv_bias)
        self.rpn = RPN(r, cfg.fpn_channels)
        self.roi_heads = self.build_roi_heads(cfg)
        self.transform = build_transform(cfg.input)

    def build_roi_heads(self, cfg) -> nn.Module:
        return RCNNHeads(cfg.rcnn, pooler=build_pooler(cfg), in_channels=cfg.fpn_channels,
                         num_classes=cfg.num_classes, score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                         detections_per_img=cfg.detections_per_img)

    def train(self, mode: bool = True) -> "FasterRCNN":
        """``model.rcnn.norm_eval``: the backbone's BatchNorm layers stay in eval mode (frozen
        statistics, trainable affine parameters), as mmdetection's ``norm_eval=True``."""
        super().train(mode)
        if mode and self.cfg.rcnn.norm_eval:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # -- pieces ---------------------------------------------------------------------------------
    def features(self, batch: Tensor) -> list[Tensor]:
        """[P2, P3, P4, P5, P6]."""
        return self.fpn(self.body(batch))

    def roi_losses(self, feats: list[Tensor], proposals: list[Tensor], sizes, targets: list[dict]) -> dict[str, Tensor]:
        """Losses of the RoI heads; ``targets`` carry torchvision's labels (1..C, 0 = background)."""
        return self.roi_heads.losses(feats[: len(ROI_STRIDES)], proposals, sizes, targets)

    def detect(self, feats: list[Tensor], proposals: list[Tensor], sizes) -> list[dict]:
        """Detections in the resized images' pixels, 0-based labels."""
        return self.roi_heads.detect(feats[: len(ROI_STRIDES)], proposals, sizes)

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        check_images(images)
        check_targets(targets, len(images), self.cfg.num_classes, training=self.training)
        orig_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, sizes, targets = self.transform(images, targets)
        feats = self.features(batch)
        proposals, losses = self.rpn(feats, sizes, targets if self.training else None)
        if self.training:
            losses.update(self.roi_losses(feats, proposals, sizes, to_torchvision_labels(targets)))
            return losses
        with torch.set_grad_enabled(graph_to_images(images)):  # scores keep a graph to images requiring grad
            return to_input_pixels(self.detect(feats, proposals, sizes), sizes, orig_sizes)


def to_torchvision_labels(targets: list[dict]) -> list[dict]:
    """0-based class labels -> torchvision's RoI-head labels (1..C, 0 = background): +1."""
    return [dict(boxes=t["boxes"], labels=t["labels"].long() + 1) for t in targets]
