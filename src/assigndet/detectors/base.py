"""Shared machinery of the dense detectors: input checks, transform, backbone + FPN + head,
anchors, inference; a subclass adds its assignment and losses (``compute_losses``)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..anchors import AnchorGenerator
from ..boxes import BoxCoder
from ..config import ModelConfig
from ..nn import DenseHead, ImageTransform, ResNetBody, RetinaFPN, load_backbone_weights
from ..postprocess import dense_postprocess, mmdet_postprocess


class TargetError(ValueError):
    """Malformed training targets (names the image)."""


def check_targets(targets: list[dict], num_images: int, num_classes: int) -> None:
    if len(targets) != num_images:
        raise TargetError(f"got {num_images} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        name = f"image {t.get('image_id', i)}"
        if "boxes" not in t or "labels" not in t:
            raise TargetError(f"{name}: a target needs 'boxes' and 'labels'")
        boxes, labels = t["boxes"], t["labels"]
        if boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != boxes.shape[:1]:
            raise TargetError(f"{name}: boxes must be (G, 4) and labels (G,), got {tuple(boxes.shape)} and {tuple(labels.shape)}")
        if boxes.numel() and not bool(torch.isfinite(boxes).all()):
            raise TargetError(f"{name}: non-finite box coordinates")
        if boxes.numel() and bool(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any()):
            raise TargetError(f"{name}: a box has x2 < x1 or y2 < y1")
        if labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
            raise TargetError(f"{name}: labels must be 0-based class indices below {num_classes}")


class DenseDetector(nn.Module):
    """Backbone (ResNet) + FPN P3-P7 + :class:`DenseHead` + anchors, torchvision's contract:
    ``model(images, targets)`` -> dict of losses in train mode, ``model(images)`` -> list of
    dict(boxes, scores, labels) in eval mode, boxes in the input images' pixels."""

    #: rank candidates by sqrt(p q) (PAA) instead of p q (ATSS, Dynamic ATSS)
    sqrt_rank = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        b = cfg.backbone
        body = ResNetBody(depth=b.depth, groups=b.groups, width_per_group=b.width_per_group, base_width=b.base_width,
                          style=b.style, norm=b.norm, frozen_bn_eps=b.frozen_bn_eps, freeze_at=0,
                          stage_with_dcn=list(b.stage_with_dcn))
        if b.weights:
            load_backbone_weights(body, b.weights, depth=b.depth, groups=b.groups, width_per_group=b.width_per_group)
        body.freeze(b.freeze_at)
        self.body = body
        self.fpn = RetinaFPN(body.out_channels[1:], cfg.fpn_channels, relu_before_p7=cfg.fpn_relu_before_p7)
        self.anchor_generator = AnchorGenerator(
            sizes=cfg.anchor_sizes, strides=cfg.anchor_strides, aspect_ratios=cfg.anchor_aspect_ratios,
            scales_per_octave=cfg.anchor_scales_per_octave, style=cfg.anchor_style)
        self.head = DenseHead(in_channels=cfg.fpn_channels, num_classes=cfg.num_classes,
                              num_anchors=self.anchor_generator.num_anchors_per_location, num_convs=cfg.head_convs,
                              num_levels=len(cfg.anchor_strides), prior_prob=cfg.prior_prob,
                              conv_bias=cfg.head_conv_bias, norm=cfg.head_norm, dcn_last=cfg.head_dcn)
        i = cfg.input
        self.transform = ImageTransform(min_size_train=i.min_size_train, max_size_train=i.max_size_train,
                                        min_size_test=i.min_size_test, max_size_test=i.max_size_test,
                                        size_divisible=i.size_divisible, to_bgr255=i.to_bgr255,
                                        pixel_mean=i.pixel_mean, pixel_std=i.pixel_std, resize_rule=i.resize_rule)
        self.coder = BoxCoder(offset=cfg.offset, symmetric_clamp=cfg.coder_symmetric_clamp)
        self.offset = cfg.offset
        if len(cfg.anchor_strides) != 5:
            raise ValueError("the dense detectors use five pyramid levels P3-P7 (anchor_strides of length 5)")
        if cfg.postprocess not in ("original", "mmdet"):
            raise ValueError(f"unknown model.postprocess {cfg.postprocess!r} (expected 'original' or 'mmdet')")
        if cfg.loss_normalizer not in ("global", "local"):
            raise ValueError(f"unknown model.loss_normalizer {cfg.loss_normalizer!r} (expected 'global' or 'local')")

    # -- pieces ---------------------------------------------------------------------------------
    def features(self, batch: Tensor) -> list[Tensor]:
        return self.fpn(self.body(batch)[1:])

    def anchors(self, features: list[Tensor]) -> tuple[Tensor, list[int]]:
        return self.anchor_generator([tuple(f.shape[-2:]) for f in features])

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("in training mode the model needs targets")
        if targets is not None:
            check_targets(targets, len(images), self.cfg.num_classes)
        if not self.training and self.cfg.tta.enabled:
            from ..tta import tta_forward

            return tta_forward(self, images)
        orig_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, sizes, targets = self.transform(images, targets)
        feats = self.features(batch)
        logits, deltas, quality = self.head(feats)  # (B, A, C), (B, A, 4), (B, A)
        anchors, num_per_level = self.anchors(feats)
        if self.training:
            return self.compute_losses(logits, deltas, quality, anchors, num_per_level, targets)
        return self.postprocess(logits, deltas, quality, anchors, num_per_level, sizes, orig_sizes)

    def compute_losses(self, logits, deltas, quality, anchors, num_per_level, targets) -> dict[str, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def postprocess(self, logits, deltas, quality, anchors, num_per_level, sizes, orig_sizes) -> list[dict]:
        c = self.cfg
        results = []
        for i, (size, orig) in enumerate(zip(sizes, orig_sizes)):
            if c.postprocess == "mmdet":  # boxes come back in the original image's pixels
                results.append(mmdet_postprocess(
                    logits[i], deltas[i], quality[i], anchors, num_per_level, size, orig, self.coder,
                    method="paa" if self.sqrt_rank else "atss", score_thresh=c.score_thresh,
                    pre_nms_top_n=c.pre_nms_top_n, nms_thresh=c.nms_thresh, detections_per_img=c.detections_per_img,
                    score_voting=c.score_voting, score_voting_sigma=c.score_voting_sigma))
                continue
            det = dense_postprocess(
                logits[i], deltas[i], quality[i], anchors, num_per_level, size, self.coder,
                score_thresh=c.score_thresh, pre_nms_top_n=c.pre_nms_top_n, nms_thresh=c.nms_thresh,
                detections_per_img=c.detections_per_img, sqrt_rank=self.sqrt_rank, offset=self.offset,
                score_voting=c.score_voting, score_voting_sigma=c.score_voting_sigma)
            if size != orig:
                rh, rw = orig[0] / size[0], orig[1] / size[1]
                det["boxes"] = det["boxes"] * det["boxes"].new_tensor([rw, rh, rw, rh])
            results.append(det)
        return results


from ..released import install_pth_loader as _install_pth_loader  # noqa: E402

_install_pth_loader()  # released .pth checkpoints load through checkpoints.load_weights


def zero_loss(*tensors: Tensor) -> Tensor:
    """A zero that keeps the graph connected to ``tensors`` (for DDP when a term has no sample)."""
    return sum(t.sum() * 0.0 for t in tensors)
