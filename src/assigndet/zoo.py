"""The published model tables as presets (SPEC §9, §3.5, §3.7, §6).

Every row of the ATSS (sfzhang15/ATSS) and PAA (kkhoot/PAA) README tables is one preset, named
after the published model with the method prefix in lower case (``atss_dcnv2_X_101_64x4d_FPN_2x``,
``paa_R_50_FPN_1.5x``); the multi-scale-test rows are the same model with the test-time
augmentation of SPEC §1.10 switched on (``model.tta.enabled=true``) and the suffix ``_ms_test``.
Dynamic ATSS (ZTX-100/DLA-Combined-IoUs) reuses the ATSS configs unchanged, so every ATSS row
has a ``dynamic_atss_*`` twin (no published numbers). PAA_minimal (feiyuhuahuo/PAA_minimal) and
mmdetection's ports have their own rows (``paa_minimal_*``, ``*_mmdet``).

What the configs share (the original YAML files): caffe2-style ResNet (stride in the 1x1 conv)
for R-50 / R-101 with MSRA weights, stride in the 3x3 conv for the FAIR ResNeXt weights, FrozenBN
without epsilon, stem + layer1 frozen; modulated DCN v2 in c3-c5 (ResNet) or c4-c5 (ResNeXt) and
in the last conv of each head tower for ``dcnv2``; anchors 8·stride, one per location; SGD 0.01
for 16 images, constant warm-up; 1x = 90k iterations (steps 60k/80k), 1.5x = 135k (90k/120k),
2x = 180k (120k/160k) with the short side drawn from 640..800. PAA's X-152 config differs:
8 images at LR 0.005 for 360k iterations (240k/320k), short side 640..864 (test 864), long side
1440.

Published AP is COCO minival (val2017) where the README gives it, else test-dev (see the note
of each row; ``assigndet presets`` prints both).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .config import (BackboneConfig, Config, DataConfig, InputConfig, ModelConfig, SolverConfig, TestConfig,
                     register)

#: rows whose published AP is test-dev only, or with extra published numbers
PUBLISHED_NOTES: dict[str, str] = {}

#: mmdetection's ImageNet normalisation (RGB, 0..255 scale)
MMDET_PIXEL_MEAN = [123.675, 116.28, 103.53]
MMDET_PIXEL_STD = [58.395, 57.12, 57.375]
#: COCO train2017 images with annotations / 16 images per iteration (mmdetection's epochs -> iterations)
MMDET_ITERS_PER_EPOCH = 7330


@dataclass(frozen=True)
class Backbone:
    depth: int
    groups: int = 1
    width_per_group: int = 64

    @property
    def resnext(self) -> bool:
        return self.groups > 1


BACKBONES = {
    "R_50": Backbone(50),
    "R_101": Backbone(101),
    "X_101_32x8d": Backbone(101, 32, 8),
    "X_101_64x4d": Backbone(101, 64, 4),
    "X_152_32x8d": Backbone(152, 32, 8),
}

SCHEDULES = {  # max_iter, steps, multi-scale training
    "1x": (90000, [60000, 80000], False),
    "1.5x": (135000, [90000, 120000], False),
    "2x": (180000, [120000, 160000], True),
}


@dataclass(frozen=True)
class Row:
    """One published model: method, backbone key, DCN, schedule, AP minival / test-dev."""

    method: str  # atss | paa | dynamic_atss
    backbone: str
    dcn: bool
    schedule: str
    ap_minival: Optional[float]
    ap_test_dev: Optional[float]
    ms_test: bool = False

    @property
    def name(self) -> str:
        dcn = "dcnv2_" if self.dcn else ""
        return f"{self.method}_{dcn}{self.backbone}_FPN_{self.schedule}" + ("_ms_test" if self.ms_test else "")


#: sfzhang15/ATSS README (SPEC §9)
ATSS_ROWS = [
    Row("atss", "R_50", False, "1x", 39.3, 39.3),
    Row("atss", "R_50", True, "1x", 43.2, 43.0),
    Row("atss", "R_101", False, "2x", 43.5, 43.6),
    Row("atss", "R_101", True, "2x", 46.1, 46.3),
    Row("atss", "X_101_32x8d", False, "2x", 44.8, 45.1),
    Row("atss", "X_101_32x8d", True, "2x", 47.7, 47.7),
    Row("atss", "X_101_64x4d", False, "2x", 45.5, 45.6),
    Row("atss", "X_101_64x4d", True, "2x", 47.7, 47.7),
    Row("atss", "X_101_64x4d", True, "2x", None, 50.7, ms_test=True),
]
#: kkhoot/PAA README (SPEC §9)
PAA_ROWS = [
    Row("paa", "R_50", False, "1x", 40.4, None),
    Row("paa", "R_50", False, "1.5x", 41.1, 41.2),
    Row("paa", "R_101", False, "2x", 44.6, 44.9),
    Row("paa", "R_101", True, "2x", 47.1, 47.4),
    Row("paa", "X_101_64x4d", False, "2x", 46.4, 46.8),
    Row("paa", "X_101_64x4d", True, "2x", 48.8, 49.2),
    Row("paa", "X_101_32x8d", True, "2x", 48.9, 49.0),
    Row("paa", "X_152_32x8d", True, "2x", 50.5, 50.8),
    Row("paa", "X_101_64x4d", True, "2x", 51.3, 51.6, ms_test=True),
    Row("paa", "X_101_32x8d", True, "2x", 51.2, 51.4, ms_test=True),
    Row("paa", "X_152_32x8d", True, "2x", 53.0, 53.5, ms_test=True),
]
#: Dynamic ATSS: the ATSS configs with the dynamic assignment; nothing published (SPEC §10)
DYNAMIC_ATSS_ROWS = [Row("dynamic_atss", r.backbone, r.dcn, r.schedule, None, None, r.ms_test) for r in ATSS_ROWS]
ROWS = ATSS_ROWS + PAA_ROWS + DYNAMIC_ATSS_ROWS


def coco_data() -> DataConfig:
    return DataConfig(root="datasets/coco", train_images="train2017",
                      train_ann="annotations/instances_train2017.json", val_images="val2017",
                      val_ann="annotations/instances_val2017.json")


def build_row(row: Row) -> Config:
    """The Config of one published row."""
    bb = BACKBONES[row.backbone]
    max_iter, steps, multiscale = SCHEDULES[row.schedule]
    backbone = BackboneConfig(depth=bb.depth, groups=bb.groups, width_per_group=bb.width_per_group,
                              style="pytorch" if bb.resnext else "caffe2",  # STRIDE_IN_1X1 False for ResNeXt
                              stage_with_dcn=([False, False, True, True] if bb.resnext else [False, True, True, True])
                              if row.dcn else [False, False, False, False])
    inp = InputConfig(min_size_train=[640, 800] if multiscale else [800])
    solver = SolverConfig(max_iter=max_iter, steps=list(steps))
    if row.method == "paa" and row.backbone == "X_152_32x8d":  # configs/paa/paa_dcnv2_X_152_32x8d_FPN_2x.yaml
        inp = InputConfig(min_size_train=[640, 864], max_size_train=1440, min_size_test=864, max_size_test=1440)
        solver = SolverConfig(ims_per_batch=8, max_iter=360000, steps=[240000, 320000])
    model = ModelConfig(arch=row.method, backbone=backbone, input=inp, head_dcn=row.dcn)
    if row.method == "paa":
        model.reg_loss_weight = 1.3
        model.quality_loss_weight = 0.5
        model.paa_iou_threshold = 0.1
        model.score_voting = True
    model.tta.enabled = row.ms_test
    return Config(model=model, data=coco_data(), solver=solver, test=TestConfig())


# ------------------------------------------------------------------------------ PAA_minimal
def paa_minimal(backbone: str, schedule: str, ims_per_batch: int) -> Config:
    """feiyuhuahuo/PAA_minimal (SPEC §3.7): PAA with the batch-size scaling of its configs
    (LR 0.01·bs/16, iterations and steps ×16/bs), the GMM cut taken inside the foreground subset
    (``paa_variant="minimal"``), per-process loss normalisers, ``int(scale·side)`` resizing and
    score voting off by default. (Its 10000 placeholder for the location score of non-candidates
    has no effect: those anchors are never candidates.)"""
    cfg = build_row(Row("paa", backbone, False, schedule, None, None))
    m, s = cfg.model, cfg.solver
    m.paa_variant = "minimal"
    m.loss_normalizer = "local"
    m.input.resize_rule = "minimal"
    m.score_voting = False
    factor = ims_per_batch / 16
    s.ims_per_batch = ims_per_batch
    s.max_iter = int(s.max_iter / factor)
    s.steps = [int(x / factor) for x in s.steps]
    return cfg


# ------------------------------------------------------------------------------ mmdetection
def mmdet(method: str, backbone: str, epochs: int, steps: tuple[int, int], multiscale: bool = False) -> Config:
    """mmdetection's ATSS / PAA ports (SPEC §6): torchvision-style backbone with frozen BN
    (eps 1e-5), RGB mean/std, keep-ratio resize rounded to nearest, no +1 anywhere, anchors
    centred on the grid points, no ReLU before P7, bias-free tower convs, symmetric delta clamp,
    ATSS top-k not multiplied by the anchors per location, mmdetection's inference rules
    (``model.postprocess="mmdet"``), its PAA re-assignment rule, plain LR for biases and a linear
    warm-up. Epochs are converted to iterations at 16 images per iteration."""
    bb = BACKBONES[backbone]
    model = ModelConfig(
        arch=method,
        backbone=BackboneConfig(depth=bb.depth, groups=bb.groups, width_per_group=bb.width_per_group,
                                style="pytorch", norm="frozen_bn", frozen_bn_eps=1e-5, freeze_at=2),
        input=InputConfig(min_size_train=[640, 800] if multiscale else [800], to_bgr255=False,
                          pixel_mean=list(MMDET_PIXEL_MEAN), pixel_std=list(MMDET_PIXEL_STD), resize_rule="mmdet"),
        fpn_relu_before_p7=False, head_conv_bias=False, anchor_style="mmdet", offset=0.0,
        coder_symmetric_clamp=True, postprocess="mmdet")
    if method == "paa":
        model.reg_loss_weight = 1.3
        model.quality_loss_weight = 0.5
        model.paa_variant = "mmdet"
        model.loss_normalizer = "local"  # mmdetection's PAA head normalises per GPU (no all-reduce)
        model.score_voting = True
    it = MMDET_ITERS_PER_EPOCH
    solver = SolverConfig(max_iter=epochs * it, steps=[steps[0] * it, steps[1] * it], bias_lr_factor=1.0,
                          weight_decay_bias=1e-4, warmup_iters=500, warmup_factor=0.001, warmup_method="linear")
    return Config(model=model, data=coco_data(), solver=solver, test=TestConfig())


#: name -> (builder, published AP, note)
MMDET_ROWS: dict[str, tuple[Callable[[], Config], float, str]] = {
    "atss_R_50_FPN_1x_mmdet": (lambda: mmdet("atss", "R_50", 12, (8, 11)), 39.4, "mmdetection, COCO val"),
    "atss_R_101_FPN_1x_mmdet": (lambda: mmdet("atss", "R_101", 12, (8, 11)), 41.5, "mmdetection, COCO val"),
    "paa_R_50_FPN_1x_mmdet": (lambda: mmdet("paa", "R_50", 12, (8, 11)), 40.4,
                              "mmdetection, COCO val (40.2 without score voting)"),
    "paa_R_50_FPN_1.5x_mmdet": (lambda: mmdet("paa", "R_50", 18, (12, 16)), 41.4,
                                "mmdetection, COCO val (41.2 without score voting)"),
    "paa_R_50_FPN_2x_mmdet": (lambda: mmdet("paa", "R_50", 24, (16, 22)), 41.6, "mmdetection, COCO val"),
    "paa_R_50_FPN_mstrain_3x_mmdet": (lambda: mmdet("paa", "R_50", 36, (28, 34), True), 43.3,
                                      "mmdetection, COCO val"),
    "paa_R_101_FPN_1x_mmdet": (lambda: mmdet("paa", "R_101", 12, (8, 11)), 42.6,
                               "mmdetection, COCO val (42.4 without score voting)"),
    "paa_R_101_FPN_2x_mmdet": (lambda: mmdet("paa", "R_101", 24, (16, 22)), 43.5, "mmdetection, COCO val"),
    "paa_R_101_FPN_mstrain_3x_mmdet": (lambda: mmdet("paa", "R_101", 36, (28, 34), True), 45.1,
                                       "mmdetection, COCO val"),
}

PAA_MINIMAL_ROWS: dict[str, tuple[Callable[[], Config], float, str]] = {
    "paa_minimal_res50_1x": (lambda: paa_minimal("R_50", "1x", 12), 40.2,
                             "COCO val, batch 12, 120k it (40.5 with model.score_voting=true)"),
    "paa_minimal_res101_2x": (lambda: paa_minimal("R_101", "2x", 10), 44.2,
                              "COCO val, batch 10, 288k it (44.3 with model.score_voting=true)"),
}


def _row_note(row: Row) -> str:
    if row.ap_minival is None and row.ap_test_dev is None:
        return "no published number"
    tta = ", multi-scale test" if row.ms_test else ""
    if row.ap_minival is None:
        return f"test-dev{tta}"
    return f"minival{tta}" + (f"; test-dev {row.ap_test_dev}" if row.ap_test_dev is not None else "")


def zoo_names() -> list[str]:
    return [r.name for r in ROWS] + list(PAA_MINIMAL_ROWS) + list(MMDET_ROWS)


def _register_all() -> None:
    for row in ROWS:
        ap = row.ap_minival if row.ap_minival is not None else row.ap_test_dev
        register(row.name, published_ap=ap)(lambda row=row: build_row(row))
        PUBLISHED_NOTES[row.name] = _row_note(row)
    for table in (PAA_MINIMAL_ROWS, MMDET_ROWS):
        for name, (fn, ap, note) in table.items():
            register(name, published_ap=ap)(fn)
            PUBLISHED_NOTES[name] = note


_register_all()

__all__ = ["ROWS", "ATSS_ROWS", "PAA_ROWS", "DYNAMIC_ATSS_ROWS", "MMDET_ROWS", "PAA_MINIMAL_ROWS", "PUBLISHED_NOTES",
           "BACKBONES", "SCHEDULES", "Row", "build_row", "paa_minimal", "mmdet", "zoo_names"]
