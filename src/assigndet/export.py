"""Export a detector with its pre- and post-processing in the graph: ``torch.export`` and ONNX.

:class:`ExportableDetector` wraps an eval-mode detector (ATSS, PAA, Dynamic ATSS, Faster R-CNN)
as one function of one image, ``(3, H, W)`` (or ``(1, 3, H, W)`` with ``batch_dim=True``), float
0..1 or uint8 0..255 RGB as ``model([image])`` takes it, to ``boxes (N, 4)`` in the input image's
pixels, ``scores (N,)`` and 0-based ``labels (N,)``. Inside: the test-time resize rule of the
model's ``ImageTransform`` (short side ``min_size_test`` ..., computed on float64 tensors so that
the size is *data* in the graph, never a constant of the example image), bilinear resize,
normalisation, padding to ``size_divisible``, backbone, FPN, head, anchors from the feature
sizes, and the detector's own post-processing functions (threshold, top-k, decode, clip,
class-wise NMS -> ONNX ``NonMaxSuppression``, the top-k cut, PAA's score voting).

Exporters: :func:`export_program` is ``torch.export.export`` (non-strict) with H and W dynamic
(``torch.export.Dim``, no multiple-of-32 requirement: the graph pads); :func:`export_onnx` hands
that program to torch's ONNX exporter (``torch.onnx.export(program, dynamo=True)``, needs
``onnxscript``), which keeps the two axes symbolic. The TorchScript exporter is not used: its
tracing would freeze the resize rule and every count at the example image's values.

Differences from eager, by design: a uint8 image is resized in float by the same bilinear
interpolation as a float image (eager's exact CPU path resizes uint8 with Pillow, SPEC §8 trap 25);
test-time augmentation and ``model.postprocess=mmdet`` are not exported (a ``ConfigError``).
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import boxes as tv_boxes
from torchvision.ops import roi_align

from .anchors import grid_anchors
from .detectors import DenseDetector, FasterRCNN, IoUNet
from .detectors.rcnn_parts import LevelRoIAlign
from .errors import ConfigError, UserError
from .nn import ImageTransform
from .ops.prroi_pool import map_roi_levels
from .postprocess import class_wise_nms, dense_postprocess
from .variants import Postprocess, ResizeRule

#: the largest image side the exported graphs accept (torch.export needs a range)
MAX_SIDE = 4096
#: the smallest (the backbone needs a few pixels per stride-128 cell after the resize)
MIN_SIDE = 16


# ------------------------------------------------------------------------------ pre-processing
def _f64(x) -> Tensor:
    """A Python or symbolic int as a 0-dim float64 tensor (``torch.full`` keeps it symbolic)."""
    return torch.full((), x, dtype=torch.float64)


def resized_size(height, width, min_size: int, max_size: int, rule: ResizeRule) -> tuple[Tensor, Tensor]:
    """:func:`assigndet.nn.transform.resize_size` on tensors (same float64 arithmetic, no Python
    branch on the size) -> 0-dim int64 tensors (H', W'). ``tests/test_export.py`` checks the two agree."""
    h, w = _f64(height), _f64(width)
    short, long = torch.minimum(h, w), torch.maximum(h, w)
    if rule is not ResizeRule.mrcnn:
        scale = min_size / short
        if max_size > 0:
            scale = torch.minimum(scale, max_size / long)
        half = 0.5 if rule is ResizeRule.mmdet else 0.0
        return (h * scale + half).to(torch.int64), (w * scale + half).to(torch.int64)
    size = _f64(min_size)
    if max_size > 0:
        size = torch.where(long / short * size > max_size, torch.round(max_size * short / long), size)
    portrait = w < h
    nh = torch.where(portrait, torch.trunc(size * h / w), size)
    nw = torch.where(portrait, size, torch.trunc(size * w / h))
    keep = short == size  # the short side already has the target length
    return torch.where(keep, h, nh).to(torch.int64), torch.where(keep, w, nw).to(torch.int64)


def preprocess(image: Tensor, t: ImageTransform) -> tuple[Tensor, Tensor, Tensor]:
    """One image (3, H, W) -> the padded normalised batch (1, 3, H_pad, W_pad) and the resized
    size (H', W') as 0-dim int64 tensors."""
    h, w = image.shape[-2], image.shape[-1]
    nh_t, nw_t = resized_size(h, w, t.min_size_test, t.max_size_test, t.resize_rule)
    nh, nw = nh_t.item(), nw_t.item()
    torch._check(nh > 0)
    torch._check(nw > 0)
    x = image.to(t.pixel_mean.dtype)[None]  # (1, 3, H, W)
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                      antialias=t.resize_rule is not ResizeRule.mmdet)[0]  # (3, H', W')
    if image.dtype != torch.uint8:
        x = x * 255.0
    if t.to_bgr255:
        x = x.flip(0)
    x = (x - t.pixel_mean) / t.pixel_std
    d = t.size_divisible
    batch = F.pad(x, (0, (nw + d - 1) // d * d - nw, 0, (nh + d - 1) // d * d - nh))[None]  # (1, 3, Hp, Wp)
    return batch, nh_t, nw_t


def _to_input_pixels(boxes: Tensor, height, width, nh_t: Tensor, nw_t: Tensor) -> Tensor:
    """Boxes of the resized image -> the input image's pixels (the ratios of ``rescale_boxes``)."""
    ratio = torch.stack((_f64(width) / nw_t, _f64(height) / nh_t)).to(boxes.dtype).repeat(2)  # (4,)
    return boxes * ratio


# ------------------------------------------------------------------------------ the wrapper
def check_exportable(model: nn.Module) -> None:
    """A :class:`ConfigError` for what the exported graph does not reproduce."""
    if isinstance(model, IoUNet):
        raise ConfigError("export covers ATSS, PAA, Dynamic ATSS and Faster R-CNN, not IoU-Net")
    if not isinstance(model, (DenseDetector, FasterRCNN)):
        raise ConfigError(f"cannot export a {type(model).__name__}")
    cfg = model.cfg
    if isinstance(model, DenseDetector) and cfg.postprocess is Postprocess.mmdet:
        raise ConfigError("export reproduces model.postprocess=original only (set model.postprocess=original)")
    if getattr(cfg, "tta", None) is not None and cfg.tta.enabled:
        raise ConfigError("test-time augmentation is not exported (set model.tta.enabled=false)")


class ExportableDetector(nn.Module):
    """``forward(image)`` -> (boxes (N, 4), scores (N,), labels (N,)) of one image, the eval-mode
    ``model([image])[0]`` as a traceable function (module docstring)."""

    def __init__(self, model: nn.Module, *, batch_dim: bool = False) -> None:
        super().__init__()
        check_exportable(model)
        self.model = _exportable_copy(model.eval())
        self.batch_dim = batch_dim

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.batch_dim:
            image = image[0]  # (1, 3, H, W) -> (3, H, W)
        h, w = image.shape[-2], image.shape[-1]
        batch, nh_t, nw_t = preprocess(image, self.model.transform)
        if isinstance(self.model, FasterRCNN):
            boxes, scores, labels = two_stage_detect(self.model, batch, nh_t, nw_t)
        else:
            boxes, scores, labels = dense_detect(self.model, batch, nh_t, nw_t)
        return _to_input_pixels(boxes, h, w, nh_t, nw_t), scores, labels


def dense_detect(model: DenseDetector, batch: Tensor, nh_t: Tensor, nw_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Features, head, anchors of the feature sizes and the detector's post-processing, one image;
    boxes in the resized image's pixels."""
    feats = model.features(batch)
    logits, deltas, quality = model.head(feats)  # (1, A, C), (1, A, 4), (1, A)
    gen = model.anchor_generator
    per_level = [grid_anchors(cell, s, f.shape[-2], f.shape[-1]) for cell, s, f in zip(gen.cells(), gen.strides, feats)]
    c = model.cfg
    # the clip bounds as tensors: the resized size is data, not a Python int
    det = dense_postprocess(
        logits[0], deltas[0], quality[0], torch.cat(per_level), [a.shape[0] for a in per_level],
        (nh_t.to(logits.dtype), nw_t.to(logits.dtype)), model.coder, score_thresh=c.score_thresh,
        pre_nms_top_n=c.pre_nms_top_n, nms_thresh=c.nms_thresh, detections_per_img=c.detections_per_img,
        sqrt_rank=model.sqrt_rank, offset=model.offset, score_voting=c.score_voting,
        score_voting_sigma=c.score_voting_sigma)
    return det["boxes"], det["scores"], det["labels"]


class ExportableLevelRoIAlign(LevelRoIAlign):
    """:class:`~assigndet.detectors.rcnn_parts.LevelRoIAlign` without its tests on the number of
    RoIs (of all, of each level), which are data while tracing: every level pools its (possibly
    empty) share; the same values (``tests/test_export.py``)."""

    def forward(self, features, boxes, image_shapes=None) -> Tensor:
        maps = list(features)[: len(self.strides)]
        rois = torch.cat([torch.cat((torch.full_like(b[:, :1], i), b), dim=1) for i, b in enumerate(boxes)])  # (R, 5)
        out = maps[0].new_zeros((rois.shape[0], maps[0].shape[1], *self.output_size))  # (R, C, PH, PW)
        levels = map_roi_levels(rois[:, 1:], len(maps), self.finest_scale)  # (R,)
        for lvl, (fmap, stride) in enumerate(zip(maps, self.strides)):
            idx = torch.nonzero(levels == lvl).squeeze(1)
            out[idx] = roi_align(fmap, rois[idx].to(fmap.dtype), self.output_size, 1.0 / stride,
                                 self.sampling_ratio, aligned=True)
        return out


def _exportable_copy(model: nn.Module) -> nn.Module:
    """The model itself, or for Faster R-CNN a copy whose RoI pooler is the exportable twin (the
    caller's model is left as it is)."""
    pool = getattr(getattr(model, "roi_heads", None), "box_roi_pool", None)
    if not isinstance(pool, LevelRoIAlign):
        return model
    twin = ExportableLevelRoIAlign(pool.strides, pool.output_size[0], pool.sampling_ratio, finest_scale=pool.finest_scale)
    model = copy.deepcopy(model)
    model.roi_heads.box_roi_pool = twin
    return model


@contextlib.contextmanager
def torchvision_exportable_nms():
    """While tracing: torchvision's RPN and RoI heads call ``box_ops.batched_nms``, whose choice
    of algorithm tests the number of boxes (data in the graph); they get
    :func:`~assigndet.postprocess.dense.class_wise_nms` instead, which is ``batched_nms`` in eager
    and its coordinate trick while exporting."""
    saved = tv_boxes.batched_nms
    tv_boxes.batched_nms = class_wise_nms
    try:
        yield
    finally:
        tv_boxes.batched_nms = saved


def two_stage_detect(model: FasterRCNN, batch: Tensor, nh_t: Tensor, nw_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Faster R-CNN's RPN and RoI heads, one image; boxes in the resized image's pixels."""
    feats = model.features(batch)
    size = (nh_t.item(), nw_t.item())
    with torchvision_exportable_nms():
        proposals, _ = model.rpn(feats, [size])
        det = model.detect(feats, proposals, [size])[0]
    return det["boxes"], det["scores"], det["labels"]


# ------------------------------------------------------------------------------ exporters
def example_image(height: int = 224, width: int = 288, *, dtype: torch.dtype = torch.float32,
                  batch_dim: bool = False) -> Tensor:
    """The image that traces the graph (its size and values are not baked in)."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, height, width, generator=g)
    if dtype == torch.uint8:
        img = (img * 255).to(torch.uint8)
    return img[None] if batch_dim else img


def export_program(wrapper: ExportableDetector, example: Tensor, *, dynamic: bool = True):
    """``torch.export.export`` of the wrapper (non-strict); H and W dynamic in [MIN_SIDE, MAX_SIDE]
    unless ``dynamic=False`` (then the program accepts the example's size only)."""
    shapes = None
    if dynamic:
        axes = {example.dim() - 2: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
                example.dim() - 1: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)}
        shapes = (axes,)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*create_unbacked_symint", category=FutureWarning)
        return torch.export.export(wrapper, (example,), dynamic_shapes=shapes, strict=False)


def _split_symbolic_clamps(program) -> None:
    """torch 2.14's ONNX decomposition cannot type a ``clamp`` whose bounds mix a number and a
    symbolic size (``clip_boxes``' ``min=0`` beside ``max=W - offset``; torchvision's
    ``clip_boxes_to_image``): such a clamp becomes ``clamp_min`` then ``clamp_max`` (the same values)."""
    graph = program.graph
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.clamp.default or len(node.args) < 3:
            continue
        x, lo, hi = node.args[:3]
        if lo is None or hi is None or not any(isinstance(b, torch.fx.Node) for b in (lo, hi)):
            continue
        with graph.inserting_before(node):
            low = graph.call_function(torch.ops.aten.clamp_min.default, (x, lo))
            low.meta = dict(node.meta)
            high = graph.call_function(torch.ops.aten.clamp_max.default, (low, hi))
            high.meta = dict(node.meta)
        node.replace_all_uses_with(high)
        graph.erase_node(node)
    program.graph_module.recompile()


def export_onnx(wrapper: ExportableDetector, path: str | Path, example: Tensor, *, opset: int | None = None) -> Path:
    """The ONNX model (input ``image``, outputs ``boxes``, ``scores``, ``labels``; H and W dynamic)."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)}: pip install onnx onnxscript onnxruntime")
    program = export_program(wrapper, example, dynamic=True)
    _split_symbolic_clamps(program)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torchvision's NMS meta function: a deprecation notice of torch's
        warnings.filterwarnings("ignore", message=".*create_unbacked_symint", category=FutureWarning)
        torch.onnx.export(program, (example,), str(path), dynamo=True, opset_version=opset, input_names=["image"],
                          output_names=["boxes", "scores", "labels"], external_data=False, verbose=False)
    return path


def onnx_session(path: str | Path, *, threads: int | None = None):
    """An onnxruntime CPU session of an exported model."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise UserError("running an exported model needs onnxruntime: pip install onnxruntime")
    import onnxruntime as ort  # optional dependency: only running an exported model needs it

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_detect(session, image: Tensor) -> dict[str, Tensor]:
    """Run an exported model on one image -> dict(boxes, scores, labels) as the eager model returns."""
    boxes, scores, labels = session.run(None, {"image": image.numpy()})
    return {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels)}


__all__ = ["ExportableDetector", "check_exportable", "resized_size", "preprocess", "dense_detect",
           "two_stage_detect", "example_image", "export_program", "export_onnx", "onnx_session", "onnx_detect",
           "MAX_SIDE", "MIN_SIDE"]
