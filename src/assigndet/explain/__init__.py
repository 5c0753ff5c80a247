"""The assignment explorer (``assigndet explain``): which anchors become positives for each
ground-truth box under ATSS, PAA and Dynamic ATSS, applied to the same head outputs of one
model (any dense preset, trained or not), and why.

:func:`explain` writes into ``out``:

* ``overview.png``  every GT's positive anchor centres, one panel per method
* ``gt_<i>.png``    per GT, per method: the positive anchors (coloured by FPN level) on the image,
  their count per level beside the candidates', and the decision: ATSS's candidate IoUs with
  their mean and the threshold mean + std; PAA's candidate scores with the two fitted Gaussians
  (means, variances, weights of the fit) and the cut; Dynamic ATSS's combined IoUs
  (predicted + anchor IoU) with its threshold
* ``explain.json``  all numbers, per GT and per method (:mod:`.assigners` lists the fields)
* ``index.html``    one self-contained page: settings, overview, a table with one row per GT,
  every figure (relative files beside it; opens from disk)

Everything is in the model's input pixels: the image is resized by the preset's own transform
(its test size), as the anchors are laid out on it; the page says so.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoints import load_weights
from ..config import DENSE_ARCHS, Config
from ..data import dataset_paths
from ..data.cocojson import load_json, parse_categories
from ..detectors import build_model
from ..errors import ConfigError, UserError
from ..utils import resolve_device
from .assigners import METHODS, gt_records, head_outputs, run_assigners, settings
from .figures import gt_figure, overview_figure
from .inputs import Sample, dataset_image, image_with_boxes, read_boxes
from .report import HTML_FILE, JSON_FILE, write_html, write_json

__all__ = ["ExplainResult", "explain", "read_boxes", "METHODS", "HTML_FILE", "JSON_FILE"]


@dataclass
class ExplainResult:
    out: Path
    html: Path
    json: Path
    figures: dict[str, str]  # name -> file name inside ``out``
    report: dict[str, Any]


def _model(cfg: Config, weights: Optional[str]):
    """The preset's detector on its device, eval mode, with ``weights`` (or seeded random init);
    the weights' metadata."""
    if cfg.model.arch not in DENSE_ARCHS:
        raise ConfigError(f"explain compares the dense assigners (ATSS, PAA, Dynamic ATSS) on a dense head; "
                          f"model.arch={cfg.model.arch} is a two-stage detector: use an atss / paa / dynamic_atss preset")
    model_cfg = cfg.model
    if weights:  # the file holds the whole model: no separate backbone initialisation
        model_cfg = dataclasses.replace(model_cfg, backbone=dataclasses.replace(model_cfg.backbone, weights=""))
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    meta: dict[str, str] = {}
    if weights:
        meta = load_weights(model, weights).metadata
    return model.to(resolve_device(cfg.device)).eval(), meta


def _names(meta: dict[str, str], dataset_names: Optional[list[str]], cfg: Config) -> Optional[list[str]]:
    """The class names: of the weights' metadata, else of the dataset read, else of the config's
    validation annotations when that file exists; None when none fits the class count."""
    n = cfg.model.num_classes
    candidates = [lambda: list(json.loads(meta["class_names"])), lambda: dataset_names, lambda: _config_names(cfg)]
    for read in candidates:
        try:
            names = read()
        except (KeyError, ValueError, TypeError, OSError, UserError):
            continue
        if names is not None and len(names) == n:
            return [str(x) for x in names]
    return None


def _config_names(cfg: Config) -> Optional[list[str]]:
    ann = dataset_paths(cfg.data, train=False)[1]
    if not ann.is_file():
        return None
    cats = parse_categories(load_json(ann)["categories"], ann)
    return [cats[c] for c in sorted(cats)]


def explain(cfg: Config, out: str | Path, *, preset: str = "", weights: Optional[str] = None,
            image: Optional[str] = None, boxes: Optional[str] = None,
            dataset: Optional[tuple[str | Path, str | Path]] = None, image_id: Optional[int] = None) -> ExplainResult:
    """Explain the assignment of ``image`` + ``boxes`` (a JSON file, :mod:`.inputs`), or of image
    ``image_id`` of a COCO-format dataset ``(image directory, annotation file)``, under the model
    of ``cfg``."""
    model, meta = _model(cfg, weights)
    if dataset is not None:
        sample = dataset_image(cfg, dataset[0], dataset[1], int(image_id))
        names = _names(meta, sample.class_names, cfg)
    else:
        names = _names(meta, None, cfg)
        sample = image_with_boxes(image, boxes, names=names, num_classes=cfg.model.num_classes,
                                  offset=cfg.model.offset)
    if sample.labels.numel() and int(sample.labels.max()) >= cfg.model.num_classes:
        raise ConfigError(f"the labels of {sample.source} go up to {int(sample.labels.max())} but the model has "
                          f"model.num_classes={cfg.model.num_classes}")
    names = names or [str(i) for i in range(cfg.model.num_classes)]
    heads = head_outputs(model, sample.image, sample.boxes, sample.labels)
    gts = gt_records(heads, run_assigners(model, heads))
    report = _report(cfg, preset, weights, sample, heads, gts, names, model)
    return _write(Path(out), report, heads.image.permute(1, 2, 0).numpy(), heads.level_names)


def _report(cfg, preset, weights, sample: Sample, heads, gts, names, model) -> dict[str, Any]:
    H, W = sample.image.shape[1:]
    h, w = heads.image.shape[1:]
    for g, orig in zip(gts, sample.boxes.tolist()):
        g["class_name"] = names[g["label"]]
        g["box_image"] = [round(v, 2) for v in orig]  # in the input image's pixels
    return {"preset": preset, "arch": str(cfg.model.arch), "weights": str(weights) if weights else None,
            "image": sample.source, "image_id": sample.image_id, "original_size": [H, W], "input_size": [h, w],
            "scale": [w / W, h / H], "class_names": names, "levels": heads.level_names,
            "num_anchors_per_level": heads.num_per_level, "settings": settings(model), "methods": list(METHODS),
            "gts": gts}


def _write(out: Path, report: dict[str, Any], image, levels: list[str]) -> ExplainResult:
    out.mkdir(parents=True, exist_ok=True)
    figures = {"overview": "overview.png"}
    overview_figure(image, report["gts"], report["class_names"], out / figures["overview"])
    for g in report["gts"]:
        name = f"gt_{g['index']}.png"
        gt_figure(image, g, g["class_name"], levels, out / name)
        figures[f"gt{g['index']}"] = name
    report["figures"] = figures
    js = write_json(report, out)
    page = write_html(report, figures, out)
    return ExplainResult(out, page, js, figures, report)
