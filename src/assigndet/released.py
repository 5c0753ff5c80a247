"""Checkpoints released by the original repositories, mapped onto this library's modules (SPEC §7).

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

Files are read with ``torch.load(weights_only=True)`` only. A ``module.`` prefix shared by every
key is stripped; a bare state dict and ``{"model": ...}`` / ``{"state_dict": ...}`` are accepted.
The cell anchors stored by maskrcnn-benchmark are compared with the preset's own anchors (a
mismatch is an error naming the level, not a silent override). Keys that do not map keep their
file names, so :func:`assigndet.checkpoints.load_weights` reports them as unexpected next to
the model's missing keys. The quality branch maps only from the name the method uses
(``centerness`` for ATSS / Dynamic ATSS, ``iou_pred`` for PAA), so a checkpoint of the other
method is refused with both keys named.

Installed as the ``.pth`` hook of :mod:`assigndet.checkpoints`, so
``build_detector(name, weights="x.pth")`` and every ``--weights x.pth`` take released files
directly; ``assigndet convert IN.pth OUT.safetensors --preset NAME`` converts once.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from . import checkpoints as ck
from .checkpoints import CheckpointError, LoadReport

log = logging.getLogger("assigndet")

LAYOUTS = ("maskrcnn_benchmark", "paa_minimal", "mmdet", "assigndet")
#: the classifier that ``model.reinit_classifier`` re-initialises
CLASSIFIER_KEYS = ("head.cls_logits.weight", "head.cls_logits.bias")
_ANCHOR_KEY = re.compile(r"^rpn\.anchor_generator\.cell_anchors\.(\d+)$")


# ------------------------------------------------------------------------------------ reading
def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.pth`` file (``torch.load(weights_only=True)``), unwrapped from
    ``{"model": ...}`` / ``{"state_dict": ...}``, with a common ``module.`` prefix stripped."""
    return ck._default_pth_state(str(path))


def detect_layout(keys) -> str:
    keys = list(keys)
    if any(k.startswith(("neck.", "bbox_head.")) or (k.startswith("backbone.") and
                                                     not k.startswith(("backbone.body.", "backbone.fpn.")))
           for k in keys):
        return "mmdet"
    if any(k.startswith("backbone.body.") for k in keys) or any(k.startswith("rpn.") for k in keys):
        return "maskrcnn_benchmark" if any(k.startswith("rpn.") for k in keys) else "paa_minimal"
    return "assigndet"


# ------------------------------------------------------------------------------------ mapping
def _quality_name(model: nn.Module) -> str:
    arch = getattr(getattr(model, "cfg", None), "arch", "atss")
    return "iou_pred" if arch == "paa" else "centerness"


def _mrcnn_rules(head_prefix: str, quality: str) -> list[tuple[re.Pattern, Callable[[re.Match], str]]]:
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


def _mmdet_rules(num_convs: int) -> list[tuple[re.Pattern, Callable[[re.Match], str]]]:
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


def _apply(rules, key: str) -> Optional[str]:
    for pattern, fn in rules:
        m = pattern.match(key)
        if m:
            return fn(m)
    return None


def _check_anchors(stored: dict[int, Tensor], model: nn.Module, source: str) -> None:
    """Compare the checkpoint's cell anchors with the model's; a mismatch names the level."""
    gen = getattr(model, "anchor_generator", None)
    if gen is None or not stored:
        return
    cells = gen.cells()
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


def convert_state_dict(state: Mapping[str, Tensor], model: nn.Module, *, source: str = "checkpoint"
                       ) -> tuple[dict[str, Tensor], str]:
    """Map a released state dict onto ``model``'s key names -> (state dict, layout).

    Unmapped keys are kept under their file names (reported as unexpected by the loader).
    """
    layout = detect_layout(state)
    cfg = getattr(model, "cfg", None)
    mmdet_model = getattr(cfg, "anchor_style", "mrcnn") == "mmdet"
    if layout == "mmdet" and cfg is not None and not mmdet_model:
        raise CheckpointError(f"{source} is an mmdetection checkpoint (keys like "
                              f"{next(k for k in state if k.startswith(('backbone.', 'neck.', 'bbox_head.')))}); "
                              "load it into a *_mmdet preset, whose conventions (no +1, centre-0 anchors, RGB "
                              "mean/std, bias-free head convs) it was trained with")
    if layout in ("maskrcnn_benchmark", "paa_minimal") and mmdet_model:
        raise CheckpointError(f"{source} is a maskrcnn-benchmark-family checkpoint (keys backbone.body.*); load it "
                              "into a preset without the _mmdet suffix")
    if layout == "assigndet":
        return dict(state), layout
    if layout == "mmdet":
        rules = _mmdet_rules(getattr(cfg, "head_convs", 4))
    else:
        rules = _mrcnn_rules("rpn.head." if layout == "maskrcnn_benchmark" else "head.", _quality_name(model))
    own = model.state_dict()
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
        if new not in own and new.endswith(".conv2.weight") and new[: -len("weight")] + "conv.weight" in own:
            new = new[: -len("weight")] + "conv.weight"  # mmdet DCN kernel: conv2.weight -> conv2.conv.weight
        if new.startswith("head.scales.") and value.dim() == 0:
            value = value.reshape(1)  # mmdetection's Scale is 0-dim
        out[new] = value
    _check_anchors(anchors, model, source)
    return out, layout


def _check_classifier(state: dict[str, Tensor], model: nn.Module, source: str) -> dict[str, Tensor]:
    """Re-initialise (``model.reinit_classifier``) or refuse a classifier of another class count."""
    own = model.state_dict()
    if not all(k in own for k in CLASSIFIER_KEYS):
        return state
    if getattr(getattr(model, "cfg", None), "reinit_classifier", False):
        state = dict(state)
        shapes = [tuple(state[k].shape) if k in state else None for k in CLASSIFIER_KEYS]
        for k in CLASSIFIER_KEYS:
            state[k] = own[k].detach().clone()
        n_file = shapes[1][0] if shapes[1] else "?"
        log.info("reinitialised the classifier (%s: %s classes in %s -> %d in the model) for fine-tuning",
                 ", ".join(CLASSIFIER_KEYS), n_file, source, own[CLASSIFIER_KEYS[1]].shape[0])
        return state
    w = state.get(CLASSIFIER_KEYS[0])
    if w is not None and w.shape[0] != own[CLASSIFIER_KEYS[0]].shape[0]:  # another class count (other shapes: a layout error)
        num_anchors = getattr(getattr(model, "anchor_generator", None), "num_anchors_per_location", 1)
        raise CheckpointError(
            f"{source} has a classifier for {w.shape[0] // num_anchors} classes ({CLASSIFIER_KEYS[0]} "
            f"{list(w.shape)}, {CLASSIFIER_KEYS[1]} {list(state[CLASSIFIER_KEYS[1]].shape) if CLASSIFIER_KEYS[1] in state else '?'}) "
            f"but the model has {own[CLASSIFIER_KEYS[1]].shape[0] // num_anchors} "
            f"({list(own[CLASSIFIER_KEYS[0]].shape)}): set model.num_classes={w.shape[0] // num_anchors}, or "
            "model.reinit_classifier=true to fine-tune with a fresh classifier")
    return state


def pth_loader(path: str, model: nn.Module) -> dict[str, Tensor]:
    """The hook installed into :func:`assigndet.checkpoints.register_pth_loader`."""
    state = read_checkpoint(path)
    if not (hasattr(model, "anchor_generator") and hasattr(model, "head") and hasattr(model, "cfg")):
        return state  # not a dense detector: the default reading (prefix stripped, no renaming)
    out, layout = convert_state_dict(state, model, source=str(path))
    if layout != "assigndet":
        log.info("%s: %s layout, %d tensors mapped", path, layout, len(out))
    return _check_classifier(out, model, str(path))


def install_pth_loader() -> None:
    ck.register_pth_loader(pth_loader)


def load_detector_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> LoadReport:
    """:func:`~assigndet.checkpoints.load_weights` plus the classifier check (a clear error for
    another class count, or ``model.reinit_classifier``) for this library's ``.safetensors`` files
    (released ``.pth`` files get both through the hook)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix in (".pth", ".pt", ".pkl", ".bin"):  # not through the global hook: always this converter
        return load_state(model, pth_loader(str(path), ck.unwrap_model(model)), source=str(path), strict=strict)
    if path.suffix != ck.WEIGHTS_SUFFIX or not (hasattr(model, "head") and hasattr(model, "cfg")):
        return ck.load_weights(model, path, strict=strict)
    state, meta = ck.read_weights(path)
    state = _check_classifier(state, model, str(path))
    return load_state(model, state, source=str(path), strict=strict, metadata=meta)


def pretrained_builder(weights: str | Path) -> Callable[[object], nn.Module]:
    """A ``build_model_fn`` for :func:`assigndet.engine.train`: the configured detector,
    initialised from ``weights`` (a released ``.pth`` or a ``.safetensors``) -- fine-tuning, with
    ``model.reinit_classifier=true`` for another class count::

        train(load_config(name, ["model.num_classes=7", "model.reinit_classifier=true", ...]), out,
              build_model_fn=pretrained_builder("atss_R_50_FPN_1x.pth"))
    """
    def build(model_cfg) -> nn.Module:
        from .detectors import build_model

        model = build_model(model_cfg)
        load_detector_weights(model, weights)
        return model

    return build


def load_state(model: nn.Module, state: Mapping[str, Tensor], *, source: str, strict: bool = True,
               metadata: Optional[dict[str, str]] = None) -> LoadReport:
    """Load an in-memory state dict with the same report and errors as ``load_weights``."""
    model = ck.unwrap_model(model)
    expected = model.state_dict()
    report = LoadReport(metadata=dict(metadata or {}))
    report.missing = [k for k in expected if k not in state]
    report.unexpected = [k for k in state if k not in expected]
    loadable = {}
    for k, v in state.items():
        if k in expected:
            if tuple(v.shape) != tuple(expected[k].shape):
                report.mismatched.append((k, tuple(v.shape), tuple(expected[k].shape)))
            else:
                loadable[k] = v
    if strict and not report.ok:
        raise CheckpointError(f"weights file {source} does not match the model: {report.describe()}")
    model.load_state_dict(loadable, strict=False)
    return report


__all__ = ["LAYOUTS", "read_checkpoint", "detect_layout", "convert_state_dict", "pth_loader", "install_pth_loader",
           "load_detector_weights", "load_state", "pretrained_builder"]
