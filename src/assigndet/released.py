"""Checkpoints released by the original repositories, mapped onto this library's key names (SPEC §7).

Pure converters: a state dict (and the model's config, key names and anchor cells) in, a state
dict in this library's names out. They know no detector class and load nothing into a model:
:func:`assigndet.checkpoints.load_weights` reads the file, calls them and loads the result.

Layouts recognised (by their key names):

* ``maskrcnn_benchmark`` -- sfzhang15/ATSS, kkhoot/PAA, ZTX-100/DLA-Combined-IoUs:
  ``{"model": {...}, "iteration": N, ...}`` with keys ``backbone.body.*``, ``backbone.fpn.*``,
  ``rpn.head.*``, ``rpn.anchor_generator.cell_anchors.{l}``; usually prefixed ``module.``.
* ``paa_minimal`` -- feiyuhuahuo/PAA_minimal: the same backbone keys, the head under ``head.*``,
  no anchors.
* ``mmdet`` -- mmdetection ATSS / PAA: ``{"meta": ..., "state_dict": {...}}`` with torchvision
  backbone names under ``backbone.*``, ``neck.*`` and ``bbox_head.*`` (bias-free tower convs,
  0-dim ``Scale``).
* ``assigndet`` -- this library's own names (e.g. a ``.pth`` of ``model.state_dict()``).

Files are read with ``torch.load(weights_only=True)`` only (:func:`read_checkpoint`). A
``module.`` prefix shared by every key is stripped; a bare state dict and ``{"model": ...}`` /
``{"state_dict": ...}`` are accepted. The cell anchors stored by maskrcnn-benchmark are compared
with the preset's own anchors (a mismatch is an error naming the level, not a silent override).
Keys that do not map keep their file names, so the loader reports them as unexpected next to the
model's missing keys. The quality branch maps only from the name the method uses (``centerness``
for ATSS / Dynamic ATSS, ``iou_pred`` for PAA), so a checkpoint of the other method is refused
with both keys named.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Collection, Mapping, Optional, Sequence

import torch
from torch import Tensor

from .config import DENSE_ARCHS
from .errors import CheckpointError
from .variants import Arch, Convention

#: the layouts :func:`convert_state_dict` maps (``assigndet``: already this library's names)
LAYOUTS = ("maskrcnn_benchmark", "paa_minimal", "mmdet", "assigndet")
#: the architectures whose released checkpoints these converters map: the dense detectors
RELEASED_ARCHS = DENSE_ARCHS
#: the classifier of the dense detectors (re-initialised by ``model.reinit_classifier``)
CLASSIFIER_KEYS = ("head.cls_logits.weight", "head.cls_logits.bias")
_ANCHOR_KEY = re.compile(r"^rpn\.anchor_generator\.cell_anchors\.(\d+)$")

Rules = list[tuple[re.Pattern, Callable[[re.Match], str]]]


# ------------------------------------------------------------------------------------ reading
def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.pth`` file (``torch.load(weights_only=True)``), unwrapped from
    ``{"model": ...}`` / ``{"state_dict": ...}``, with a common ``module.`` prefix stripped."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (unpickling errors come in many types)
        raise CheckpointError(f"cannot read {path} with torch.load(weights_only=True): {str(e).splitlines()[0]}") \
            from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_layout(layout: str) -> str:
    """``layout`` if it is ``"auto"`` or one of :data:`LAYOUTS`, else a ``ValueError`` naming them."""
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r} (expected one of: auto, {', '.join(LAYOUTS)})")
    return layout


def detect_layout(keys) -> str:
    """The layout (one of :data:`LAYOUTS`) that the key names of a state dict follow."""
    keys = list(keys)
    if any(k.startswith(("neck.", "bbox_head.")) or (k.startswith("backbone.") and
                                                     not k.startswith(("backbone.body.", "backbone.fpn.")))
           for k in keys):
        return "mmdet"
    if any(k.startswith("backbone.body.") for k in keys) or any(k.startswith("rpn.") for k in keys):
        return "maskrcnn_benchmark" if any(k.startswith("rpn.") for k in keys) else "paa_minimal"
    return "assigndet"


# ------------------------------------------------------------------------------------ mapping
def _mrcnn_rules(head_prefix: str, quality: str) -> Rules:
    hp = re.escape(head_prefix)
    return [
        (re.compile(r"^backbone\.body\.stem\.(conv1|bn1)\.(.+)$"), lambda m: f"body.{m[1]}.{m[2]}"),
        (re.compile(r"^backbone\.body\.(layer[1-4]\..+)$"), lambda m: f"body.{m[1]}"),
        (re.compile(r"^backbone\.fpn\.fpn_inner([2-4])\.(weight|bias)$"),
         lambda m: f"fpn.fpn.inner_blocks.{int(m[1]) - 2}.0.{m[2]}"),
        (re.compile(r"^backbone\.fpn\.fpn_layer([2-4])\.(weight|bias)$"),
         lambda m: f"fpn.fpn.layer_blocks.{int(m[1]) - 2}.0.{m[2]}"),
        (re.compile(r"^backbone\.fpn\.top_blocks\.(p6|p7)\.(weight|bias)$"), lambda m: f"fpn.fpn.extra_blocks.{m[1]}.{m[2]}"),
        (re.compile(rf"^{hp}(cls_tower|bbox_tower)\.(.+)$"), lambda m: f"head.{m[1]}.{m[2]}"),
        (re.compile(rf"^{hp}(cls_logits|bbox_pred)\.(weight|bias)$"), lambda m: f"head.{m[1]}.{m[2]}"),
        (re.compile(rf"^{hp}{quality}\.(weight|bias)$"), lambda m: f"head.quality.{m[1]}"),
        (re.compile(rf"^{hp}scales\.(\d+)\.scale$"), lambda m: f"head.scales.{m[1]}.scale"),
    ]


def _mmdet_rules() -> Rules:
    tower = {"cls": "cls_tower", "reg": "bbox_tower"}
    return [
        (re.compile(r"^backbone\.(conv1|bn1)\.(.+)$"), lambda m: f"body.{m[1]}.{m[2]}"),
        (re.compile(r"^backbone\.(layer[1-4]\.\d+)\.conv2\.conv_offset\.(weight|bias)$"),
         lambda m: f"body.{m[1]}.conv2.offset.{m[2]}"),
        (re.compile(r"^backbone\.(layer[1-4]\..+)$"), lambda m: f"body.{m[1]}"),
        (re.compile(r"^neck\.lateral_convs\.([0-2])\.conv\.(weight|bias)$"), lambda m: f"fpn.fpn.inner_blocks.{m[1]}.0.{m[2]}"),
        (re.compile(r"^neck\.fpn_convs\.([0-2])\.conv\.(weight|bias)$"), lambda m: f"fpn.fpn.layer_blocks.{m[1]}.0.{m[2]}"),
        (re.compile(r"^neck\.fpn_convs\.([34])\.conv\.(weight|bias)$"),
         lambda m: f"fpn.fpn.extra_blocks.p{int(m[1]) + 3}.{m[2]}"),
        (re.compile(r"^bbox_head\.(cls|reg)_convs\.(\d+)\.conv\.(weight|bias)$"),
         lambda m: f"head.{tower[m[1]]}.{3 * int(m[2])}.{m[3]}"),
        (re.compile(r"^bbox_head\.(cls|reg)_convs\.(\d+)\.gn\.(weight|bias)$"),
         lambda m: f"head.{tower[m[1]]}.{3 * int(m[2]) + 1}.{m[3]}"),
        (re.compile(r"^bbox_head\.atss_cls\.(weight|bias)$"), lambda m: f"head.cls_logits.{m[1]}"),
        (re.compile(r"^bbox_head\.atss_reg\.(weight|bias)$"), lambda m: f"head.bbox_pred.{m[1]}"),
        (re.compile(r"^bbox_head\.atss_centerness\.(weight|bias)$"), lambda m: f"head.quality.{m[1]}"),
        (re.compile(r"^bbox_head\.scales\.(\d+)\.scale$"), lambda m: f"head.scales.{m[1]}.scale"),
    ]


def _rules(layout: str, arch: Arch) -> Rules:
    if layout == "mmdet":
        return _mmdet_rules()
    quality = "iou_pred" if arch is Arch.paa else "centerness"
    return _mrcnn_rules("rpn.head." if layout == "maskrcnn_benchmark" else "head.", quality)


def _apply(rules: Rules, key: str) -> Optional[str]:
    for pattern, fn in rules:
        m = pattern.match(key)
        if m:
            return fn(m)
    return None


def check_anchors(stored: Mapping[int, Tensor], cells: Sequence[Tensor], source: str) -> None:
    """Compare a checkpoint's cell anchors (level -> (A, 4)) with the model's; a mismatch names the level."""
    if not stored:
        return
    if sorted(stored) != list(range(len(cells))):
        raise CheckpointError(f"{source}: the checkpoint stores cell anchors for levels {sorted(stored)} but the "
                              f"preset has {len(cells)} levels")
    for level, cell in enumerate(cells):
        file_cell = stored[level].to(torch.float32).reshape(-1, 4)
        own = cell.detach().to("cpu", torch.float32)
        if file_cell.shape != own.shape or not torch.allclose(file_cell, own, atol=1e-3, rtol=0):
            raise CheckpointError(
                f"{source}: stored cell anchors of level {level} (P{level + 3}, key "
                f"rpn.anchor_generator.cell_anchors.{level}) are {file_cell.tolist()} but the preset's are "
                f"{own.tolist()}: the checkpoint was trained with other anchor sizes, strides, aspect ratios or "
                f"anchor convention (model.anchor_*)")


def _check_conventions(layout: str, state: Mapping[str, Tensor], cfg, source: str) -> None:
    """A released layout loads only into a dense preset of its own conventions."""
    arch = getattr(cfg, "arch", None)
    if arch not in RELEASED_ARCHS:
        raise CheckpointError(f"{source} is a {layout} checkpoint; released checkpoints load into "
                              f"model.arch={'|'.join(a.value for a in RELEASED_ARCHS)}, not {arch or 'this model'}")
    mmdet_model = cfg.anchor_style is Convention.mmdet
    if layout == "mmdet" and not mmdet_model:
        raise CheckpointError(f"{source} is an mmdetection checkpoint (keys like "
                              f"{next((k for k in state if k.startswith(('backbone.', 'neck.', 'bbox_head.'))), '?')}); "
                              "load it into a *_mmdet preset, whose conventions (no +1, centre-0 anchors, RGB "
                              "mean/std, bias-free head convs) it was trained with")
    if layout in ("maskrcnn_benchmark", "paa_minimal") and mmdet_model:
        raise CheckpointError(f"{source} is a maskrcnn-benchmark-family checkpoint (keys backbone.body.*); load it "
                              "into a preset without the _mmdet suffix")


def convert_state_dict(state: Mapping[str, Tensor], cfg, own_keys: Collection[str], *, layout: str = "auto",
                       anchor_cells: Optional[Sequence[Tensor]] = None, source: str = "checkpoint"
                       ) -> tuple[dict[str, Tensor], str]:
    """Map a released state dict onto a dense detector's key names -> (state dict, layout).

    ``cfg``: the model's config (``arch``, ``anchor_style``); ``own_keys``: the model's state-dict
    keys; ``anchor_cells``: the model's cell anchors per level (compared with stored ones);
    ``layout``: one of :data:`LAYOUTS`, or ``"auto"`` to recognise it from the keys.
    Unmapped keys are kept under their file names (reported as unexpected by the loader).
    """
    layout = detect_layout(state) if check_layout(layout) == "auto" else layout
    if layout == "assigndet":
        return dict(state), layout
    _check_conventions(layout, state, cfg, source)
    rules = _rules(layout, cfg.arch)
    out: dict[str, Tensor] = {}
    anchors: dict[int, Tensor] = {}
    for key, value in state.items():
        m = _ANCHOR_KEY.match(key)
        if m:
            anchors[int(m[1])] = value
            continue
        if key.endswith("num_batches_tracked"):
            continue
        new = _apply(rules, key)
        if new is None:
            out[key] = value  # reported as unexpected
            continue
        if new not in own_keys and new.endswith(".conv2.weight") and new[: -len("weight")] + "conv.weight" in own_keys:
            new = new[: -len("weight")] + "conv.weight"  # mmdet DCN kernel: conv2.weight -> conv2.conv.weight
        if new.startswith("head.scales.") and value.dim() == 0:
            value = value.reshape(1)  # mmdetection's Scale is 0-dim
        out[new] = value
    if anchor_cells is not None:
        check_anchors(anchors, anchor_cells, source)
    return out, layout


__all__ = ["LAYOUTS", "RELEASED_ARCHS", "CLASSIFIER_KEYS", "read_checkpoint", "check_layout", "detect_layout", "check_anchors",
           "convert_state_dict"]
