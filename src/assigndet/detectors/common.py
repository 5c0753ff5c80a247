"""What every detector shares, in one place that each of them imports: the input checks, the
backbone and transform builders, the per-image ground-truth gathering, the rescale of boxes to
the input images and the zero loss that keeps the graph connected."""
from __future__ import annotations

import torch
from torch import Tensor

from ..config import BackboneConfig, InputConfig
from ..errors import InputError, TargetError
from ..nn import ImageTransform, ResNetBody, load_backbone_weights
from ..variants import Convention


# ------------------------------------------------------------------------------ inputs
def check_images(images) -> None:
    """The model's input: a list of (3, H, W) tensors with H, W > 0, uint8 or floating point, or
    one (B, 3, H, W) tensor as torchvision also takes (an :class:`InputError` names the image)."""
    if (isinstance(images, Tensor) and images.dim() != 4) or not isinstance(images, (list, tuple, Tensor)):
        kind = f"a tensor of shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"the model takes a list of (3, H, W) image tensors (or one (B, 3, H, W) tensor), got {kind}")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor):
            raise InputError(f"image {i}: expected a tensor, got {type(img).__name__}")
        if img.dim() != 3 or img.shape[0] != 3 or img.shape[1] == 0 or img.shape[2] == 0:
            raise InputError(f"image {i}: expected a (3, H, W) tensor with H, W > 0, got shape {tuple(img.shape)}")
        if img.dtype != torch.uint8 and not img.is_floating_point():
            raise InputError(f"image {i}: expected uint8 (0..255) or floating point (0..1) pixels, got {img.dtype}")


def check_targets(targets: list[dict] | None, num_images: int, num_classes: int, *, training: bool = False) -> None:
    """Training needs targets; given targets must be well formed (a :class:`TargetError` names the
    image and, for a bad box, its index): boxes (G, 4) finite with x2 > x1 and y2 > y1, as
    torchvision requires, and integer labels in [0, num_classes). The values of all images are
    tested at once: one host synchronisation per batch, the per-image search only on a failure."""
    if targets is None:
        if training:
            raise ValueError("in training mode the model needs targets")
        return
    if len(targets) != num_images:
        raise TargetError(f"got {num_images} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        _check_structure(t, i)
    given = [t for t in targets if t["boxes"].numel()]
    if not given:
        return
    if len({t[k].device for t in given for k in ("boxes", "labels")}) == 1:  # else: image by image
        boxes = torch.cat([t["boxes"].float() for t in given])  # (G, 4) as the model sees them
        if not bool(_bad_boxes(boxes, torch.cat([t["labels"] for t in given]), num_classes).any()):
            return
    for i, t in enumerate(targets):  # find and name the first bad box
        _check_values(t, _image_name(t, i), num_classes)


def _image_name(t, i: int) -> str:
    image_id = t.get("image_id", i) if isinstance(t, dict) else i
    return f"image {image_id.tolist() if isinstance(image_id, Tensor) else image_id}"


def _bad_boxes(b: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(G,) True for a box that is non-finite, empty (x2 <= x1 or y2 <= y1) or of a label outside
    [0, num_classes); ``b`` as the model sees it (float32: float64 widths below its precision collapse)."""
    return (~torch.isfinite(b).all(dim=1) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
            | (labels < 0) | (labels >= num_classes))


def _check_structure(t: dict, i: int) -> None:
    """Types and shapes (no synchronisation; the image is named only in an error)."""
    if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
        raise TargetError(f"{_image_name(t, i)}: a target needs 'boxes' and 'labels'")
    boxes, labels = t["boxes"], t["labels"]
    if not isinstance(boxes, Tensor) or not isinstance(labels, Tensor):
        problem = "'boxes' and 'labels' must be tensors"
    elif boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != boxes.shape[:1]:
        problem = f"boxes must be (G, 4) and labels (G,), got {tuple(boxes.shape)} and {tuple(labels.shape)}"
    elif boxes.numel() and (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool):
        problem = f"labels must be an integer tensor, got {labels.dtype}"
    else:
        return
    raise TargetError(f"{_image_name(t, i)}: {problem}")


def _check_values(t: dict, name: str, num_classes: int) -> None:
    boxes, labels = t["boxes"], t["labels"]
    if not boxes.numel():
        return
    if not bool(torch.isfinite(boxes).all()):
        j = int(torch.nonzero(~torch.isfinite(boxes).all(dim=1))[0])
        raise TargetError(f"{name}: box {j} has non-finite coordinates {boxes[j].tolist()}")
    b = boxes.float()  # (G, 4) as the model sees them (float64 widths below float32's precision collapse)
    bad = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])  # (G,)
    if bool(bad.any()):
        j = int(torch.nonzero(bad)[0])
        raise TargetError(f"{name}: box {j} {boxes[j].tolist()} has no positive width and height; every box needs "
                          f"x2 > x1 and y2 > y1 (as torchvision requires: drop empty boxes before the model)")
    out = (labels < 0) | (labels >= num_classes)  # (G,)
    if bool(out.any()):
        j = int(torch.nonzero(out)[0])
        raise TargetError(f"{name}: box {j} has label {int(labels[j])}; labels must be 0-based class indices "
                          f"below {num_classes}")


def graph_to_images(images: list[Tensor]) -> bool:
    """Whether eval-mode outputs keep their graph back to the images (torchvision's behaviour for
    saliency or adversarial use): grad mode on and an image requiring grad. Otherwise the
    post-processing runs under no_grad, for speed."""
    return torch.is_grad_enabled() and any(img.requires_grad for img in images)


# ------------------------------------------------------------------------------ builders
def build_body(b: BackboneConfig, *, fast: bool = True) -> ResNetBody:
    """The ResNet body of ``model.backbone``, with its ImageNet weights when configured, then frozen;
    ``fast``: ``model.fast_path``."""
    body = ResNetBody(depth=b.depth, groups=b.groups, width_per_group=b.width_per_group, base_width=b.base_width,
                      style=b.style, norm=b.norm, frozen_bn_eps=b.frozen_bn_eps, freeze_at=0,
                      stage_with_dcn=list(b.stage_with_dcn), fast=fast)
    if b.weights:
        load_backbone_weights(body, b.weights, depth=b.depth, groups=b.groups, width_per_group=b.width_per_group)
    body.freeze(b.freeze_at)
    return body


def build_transform(i: InputConfig) -> ImageTransform:
    """The input pipeline of ``model.input`` (resize, normalise, pad)."""
    return ImageTransform(min_size_train=i.min_size_train, max_size_train=i.max_size_train,
                          min_size_test=i.min_size_test, max_size_test=i.max_size_test,
                          size_divisible=i.size_divisible, to_bgr255=i.to_bgr255, pixel_mean=i.pixel_mean,
                          pixel_std=i.pixel_std, resize_rule=i.resize_rule)


# ------------------------------------------------------------------------------ targets
def atss_anchors_per_location(cfg, num_anchors_per_location: int) -> int:
    """The multiplier of ATSS's top-k: the anchors per location in the original (maskrcnn-benchmark
    convention), 1 in mmdetection's ``ATSSAssigner`` (``model.anchor_style=mmdet``)."""
    return num_anchors_per_location if cfg.anchor_style is Convention.mrcnn else 1


def _gt_index(matched: Tensor, targets: list[dict]) -> Tensor:
    """Per-image GT indices (B, A) -> indices into the GTs of all images concatenated, with one
    dummy entry appended (index M) for every anchor without a GT (matched < 0)."""
    sizes = [len(t["boxes"]) for t in targets]
    starts = torch.tensor([0] + sizes[:-1], device=matched.device).cumsum(0)  # (B,)
    dummy = sum(sizes)
    return torch.where(matched >= 0, matched + starts[:, None], torch.full_like(matched, dummy))  # (B, A)


def gather_boxes(matched: Tensor, targets: list[dict]) -> Tensor:
    """Matched GT box per anchor (B, A, 4), float32, zeros where ``matched`` < 0 (background, ignore)."""
    dev = matched.device
    all_boxes = torch.cat([t["boxes"].to(dev, torch.float32) for t in targets] + [torch.zeros(1, 4, device=dev)])
    return all_boxes[_gt_index(matched, targets)]


def gather_targets(matched: Tensor, targets: list[dict], num_classes: int) -> tuple[Tensor, Tensor]:
    """Class label per anchor (B, A) (``num_classes`` = background) and matched GT box per anchor
    (B, A, 4) (zeros for background) from per-image matches (B, A)."""
    dev = matched.device
    all_labels = torch.cat([t["labels"].to(dev, torch.int64) for t in targets]
                           + [torch.full((1,), num_classes, device=dev, dtype=torch.int64)])
    return all_labels[_gt_index(matched, targets)], gather_boxes(matched, targets)


# ------------------------------------------------------------------------------ outputs
def rescale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Boxes (N, 4) of an image of size ``from_size`` (H, W) scaled per axis to ``to_size`` (no +1 correction)."""
    if tuple(from_size) == tuple(to_size):
        return boxes
    rh, rw = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([rw, rh, rw, rh])


def to_input_pixels(results: list[dict], sizes, orig_sizes) -> list[dict]:
    """Detections in the resized images' pixels -> in the input images' pixels (in place)."""
    for det, size, orig in zip(results, sizes, orig_sizes):
        det["boxes"] = rescale_boxes(det["boxes"], size, orig)
    return results


def zero_loss(*tensors: Tensor) -> Tensor:
    """A zero that keeps the graph connected to ``tensors`` (for DDP when a term has no sample)."""
    return sum(t.sum() * 0.0 for t in tensors)


__all__ = ["InputError", "TargetError", "check_images", "check_targets", "graph_to_images", "atss_anchors_per_location", "build_body", "build_transform", "gather_boxes", "gather_targets",
           "rescale_boxes", "to_input_pixels", "zero_loss"]
