"""The presets: the one ``PRESETS`` table of named configs (``assigndet presets`` lists it).

Every row of the ATSS (sfzhang15/ATSS) and PAA (kkhoot/PAA) README tables is one preset generated
from :data:`ATSS_ROWS` / :data:`PAA_ROWS`, named after the published model with the method prefix
in lower case (``atss_dcnv2_X_101_64x4d_FPN_2x``, ``paa_R_50_FPN_1.5x``); the multi-scale-test
rows are the same model with the test-time augmentation of SPEC §1.10 on and the suffix
``_ms_test``. Dynamic ATSS (ZTX-100/DLA-Combined-IoUs) reuses the ATSS configs unchanged, so
every ATSS row has a ``dynamic_atss_*`` twin (no published numbers). PAA_minimal
(feiyuhuahuo/PAA_minimal), mmdetection's ports (``*_mmdet``), the two-stage detectors and the
small presets of the embedded shapes dataset have their own rows.

What the maskrcnn-benchmark configs share is in :func:`build_row` (caffe2-style R-50/R-101,
pytorch-style ResNeXt, DCN v2 stages, 1x/1.5x/2x schedules, PAA's X-152 exception).

Published AP: COCO minival where the README gives it, else test-dev (each row's note says which).
Each hyper-parameter set is written once (PAA's head in :func:`_paa_head`, COCO paths in :func:`coco_data`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

from .config import (BackboneConfig, Config, DataConfig, InputConfig, SolverConfig, TestConfig, apply_overrides,
                     model_config, with_arch)
from .errors import ConfigError
from .variants import (Arch, BackboneStyle, Convention, IoULoss, IoURank, LossNormalizer, LowQuality, Norm,
                       Optimizer, PAAVariant, Postprocess, ResizeRule, Warmup)

#: mmdetection's / torchvision's ImageNet normalisation of RGB input (0..255 scale)
RGB_PIXEL_MEAN = [123.675, 116.28, 103.53]
RGB_PIXEL_STD = [58.395, 57.12, 57.375]
#: detectron2's MSRA R-50 input: BGR 0..255 minus this mean, std 1
DETECTRON2_BGR_MEAN = [103.53, 116.28, 123.675]
#: COCO train2017 images with annotations (117,266) / 16 per batch: mmdetection's epochs -> iterations
ITERS_PER_EPOCH_16 = 7330


@dataclass(frozen=True)
class Preset:
    """One named config: how to build it, its published COCO AP (None: none) and a note."""

    build: Callable[[], Config]
    published_ap: Optional[float] = None
    note: str = ""

    def __call__(self) -> Config:
        return self.build()


def coco_data() -> DataConfig:
    return DataConfig(root="datasets/coco", train_images="train2017", train_ann="annotations/instances_train2017.json",
                      val_images="val2017", val_ann="annotations/instances_val2017.json")


def _paa_head(cfg: Config, variant: PAAVariant = PAAVariant.original) -> Config:
    """PAA's head settings (SPEC §3.5): GIoU x 1.3, IoU BCE x 0.5, first-stage IoU 0.1, score voting."""
    m = with_arch(cfg.model, Arch.paa)
    m.reg_loss_weight, m.quality_loss_weight, m.paa_iou_threshold = 1.3, 0.5, 0.1
    m.score_voting, m.paa_variant = True, variant
    cfg.model = m
    return cfg


# --------------------------------------------------------------------- maskrcnn-benchmark tables
class Backbone(NamedTuple):
    depth: int
    groups: int = 1
    width_per_group: int = 64


BACKBONES = {"R_50": Backbone(50), "R_101": Backbone(101), "X_101_32x8d": Backbone(101, 32, 8),
             "X_101_64x4d": Backbone(101, 64, 4), "X_152_32x8d": Backbone(152, 32, 8)}
SCHEDULES = {"1x": (90000, [60000, 80000], False), "1.5x": (135000, [90000, 120000], False),  # max_iter, steps,
             "2x": (180000, [120000, 160000], True)}  # multi-scale training


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

    @property
    def note(self) -> str:
        if self.ap_minival is None and self.ap_test_dev is None:
            return "no published number"
        tta = ", multi-scale test" if self.ms_test else ""
        if self.ap_minival is None:
            return f"test-dev{tta}"
        return f"minival{tta}" + (f"; test-dev {self.ap_test_dev}" if self.ap_test_dev is not None else "")


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


def build_row(row: Row) -> Config:
    """The Config of one published row."""
    bb = BACKBONES[row.backbone]
    resnext = bb.groups > 1  # FAIR ResNeXt weights: stride in the 3x3 conv (STRIDE_IN_1X1 False), DCN in c4-c5
    max_iter, steps, multiscale = SCHEDULES[row.schedule]
    dcn_stages = ([False, False, True, True] if resnext else [False, True, True, True]) if row.dcn else [False] * 4
    backbone = BackboneConfig(depth=bb.depth, groups=bb.groups, width_per_group=bb.width_per_group,
                              style=BackboneStyle.pytorch if resnext else BackboneStyle.caffe2,
                              stage_with_dcn=dcn_stages)
    inp = InputConfig(min_size_train=[640, 800] if multiscale else [800])
    solver = SolverConfig(max_iter=max_iter, steps=list(steps))
    if row.method == "paa" and row.backbone == "X_152_32x8d":  # configs/paa/paa_dcnv2_X_152_32x8d_FPN_2x.yaml
        inp = InputConfig(min_size_train=[640, 864], max_size_train=1440, min_size_test=864, max_size_test=1440)
        solver = SolverConfig(ims_per_batch=8, max_iter=360000, steps=[240000, 320000])
    model = model_config(Arch.atss if row.method == "paa" else row.method, backbone=backbone, input=inp,
                         head_dcn=row.dcn)
    model.tta.enabled = row.ms_test
    cfg = Config(model=model, data=coco_data(), solver=solver, test=TestConfig())
    return _paa_head(cfg) if row.method == "paa" else cfg


def paa_minimal(backbone: str, schedule: str, ims_per_batch: int) -> Config:
    """feiyuhuahuo/PAA_minimal (SPEC §3.7): PAA with the batch-size scaling of its configs
    (LR 0.01·bs/16, iterations and steps ×16/bs), the GMM cut taken inside the foreground subset
    (``paa_variant=minimal``), per-process loss normalisers, ``int(scale·side)`` resizing and
    score voting off by default."""
    cfg = build_row(Row("paa", backbone, False, schedule, None, None))
    m, s = cfg.model, cfg.solver
    m.paa_variant, m.loss_normalizer, m.score_voting = PAAVariant.minimal, LossNormalizer.local, False
    m.input.resize_rule = ResizeRule.minimal
    factor = ims_per_batch / 16
    s.ims_per_batch = ims_per_batch
    s.max_iter = int(s.max_iter / factor)
    s.steps = [int(x / factor) for x in s.steps]
    return cfg


def mmdet(method: str, backbone: str, epochs: int, steps: tuple[int, int], multiscale: bool = False) -> Config:
    """mmdetection's ATSS / PAA ports (SPEC §6): torchvision-style backbone with frozen BN
    (eps 1e-5), RGB mean/std, keep-ratio resize rounded to nearest, no +1 anywhere, anchors
    centred on the grid points, no ReLU before P7, bias-free tower convs, symmetric delta clamp,
    ATSS top-k not multiplied by the anchors per location, mmdetection's inference rules
    (``model.postprocess=mmdet``), its PAA re-assignment rule and per-GPU normalisers, plain LR for
    biases and a linear warm-up. Epochs are converted to iterations at 16 images per iteration."""
    bb = BACKBONES[backbone]
    model = model_config(
        Arch.atss,
        backbone=BackboneConfig(depth=bb.depth, groups=bb.groups, width_per_group=bb.width_per_group,
                                style=BackboneStyle.pytorch, norm=Norm.frozen_bn, frozen_bn_eps=1e-5, freeze_at=2),
        input=InputConfig(min_size_train=[640, 800] if multiscale else [800], to_bgr255=False,
                          pixel_mean=list(RGB_PIXEL_MEAN), pixel_std=list(RGB_PIXEL_STD), resize_rule=ResizeRule.mmdet),
        fpn_relu_before_p7=False, head_conv_bias=False, anchor_style=Convention.mmdet, offset=0.0,
        coder_symmetric_clamp=True, postprocess=Postprocess.mmdet)
    it = ITERS_PER_EPOCH_16
    solver = SolverConfig(max_iter=epochs * it, steps=[steps[0] * it, steps[1] * it], bias_lr_factor=1.0,
                          weight_decay_bias=1e-4, warmup_iters=500, warmup_factor=0.001, warmup_method=Warmup.linear)
    cfg = Config(model=model, data=coco_data(), solver=solver, test=TestConfig())
    if method == "paa":
        cfg = _paa_head(cfg, PAAVariant.mmdet)
        cfg.model.loss_normalizer = LossNormalizer.local  # mmdetection's PAA head normalises per GPU
    return cfg


# ---------------------------------------------------------------------------- the shapes dataset
def _with(cfg: Config, arch: Arch) -> Config:
    cfg.model = with_arch(cfg.model, arch)
    return cfg


def atss_R_18_shapes() -> Config:
    """ATSS on the embedded shapes dataset (what ``assigndet demo`` trains): a small from-scratch
    ResNet-18 of half width with BatchNorm, 64-channel FPN, 2-conv towers, 7 classes, 224-288 px."""
    model = model_config(
        Arch.atss, num_classes=7,
        backbone=BackboneConfig(depth=18, base_width=32, style=BackboneStyle.pytorch, norm=Norm.bn, freeze_at=0),
        input=InputConfig(min_size_train=[224, 288], max_size_train=384, min_size_test=256, max_size_test=384),
        fpn_channels=64, head_convs=2, anchor_sizes=[32.0, 64.0, 128.0, 256.0, 512.0])
    solver = SolverConfig(ims_per_batch=8, base_lr=0.02, reference_batch=8, max_iter=1000, steps=[750, 900],
                          warmup_iters=100, warmup_factor=0.1, warmup_method=Warmup.linear, weight_decay=1e-4,
                          checkpoint_period=500, log_period=20, clip_grad_norm=10.0)
    return Config(model=model, data=DataConfig(root="data/shapes", num_workers=2), solver=solver,
                  test=TestConfig(ims_per_batch=8, num_workers=2))


def atss_R_18_shapes_5min() -> Config:
    """What ``assigndet demo`` trains: the ``atss_R_18_shapes`` model tuned for AP >= 0.5 in 5 minutes on
    2 CPU cores: AdamW, 700 iterations of 8 images at 160-224 px (the images' own sizes), 224 px tests."""
    cfg = atss_R_18_shapes()
    i, s = cfg.model.input, cfg.solver
    i.min_size_train, i.max_size_train, i.min_size_test, i.max_size_test = [160, 224], 320, 224, 320
    s.optimizer, s.base_lr, s.weight_decay = Optimizer.adamw, 1.5e-3, 0.05
    s.max_iter, s.steps, s.warmup_iters = 700, [525, 650], 70
    return cfg


# ------------------------------------------------------ two-stage: Faster R-CNN, PAA RPN, IoU-Net
def faster_rcnn_R_50_FPN_1x() -> Config:
    """mmdetection v2.14 faster_rcnn_r50_fpn_1x_coco, the host of the IoU-Net reproduction (SPEC §5.1):
    torchvision-style R-50 (``model.backbone.weights=IMAGENET1K_V1`` for torchvision://resnet50), BN in
    eval mode, stem + layer1 frozen, RGB mean/std, 1333x800 (mmcv's rounding, OpenCV-like bilinear),
    no +1; 12 epochs at 16 images, steps at epochs 8 and 11, LR 0.02 (linear scaling: the reproduction
    ran 2 GPUs x 2 images at 0.005), linear warm-up 500 iterations from 0.001, biases with the same LR
    and weight decay."""
    model = model_config(
        Arch.faster_rcnn, num_classes=80,
        backbone=BackboneConfig(depth=50, style=BackboneStyle.pytorch, norm=Norm.bn, freeze_at=2),
        input=InputConfig(min_size_train=[800], max_size_train=1333, min_size_test=800, max_size_test=1333,
                          size_divisible=32, to_bgr255=False, pixel_mean=list(RGB_PIXEL_MEAN),
                          pixel_std=list(RGB_PIXEL_STD), resize_rule=ResizeRule.mmdet),
        fpn_channels=256, offset=0.0, score_thresh=0.05, nms_thresh=0.5, detections_per_img=100)
    e = ITERS_PER_EPOCH_16
    solver = SolverConfig(ims_per_batch=16, base_lr=0.02, reference_batch=16, max_iter=12 * e, steps=[8 * e, 11 * e],
                          warmup_iters=500, warmup_factor=0.001, warmup_method=Warmup.linear, weight_decay=1e-4,
                          weight_decay_bias=1e-4, bias_lr_factor=1.0)
    return Config(model=model, data=coco_data(), solver=solver)


def faster_rcnn_R_50_FPN_detectron2_1x() -> Config:
    """The early-detectron2 Faster R-CNN R-50-FPN 1x that PAA_Faster-RCNN starts from (SPEC §3.6):
    MSRA (caffe2-style) R-50 with FrozenBN, BGR 0..255 input minus the mean, std 1, training short
    side in [640, 800] (detectron2 picks one of 640, 672, ..., 800; here any integer in the range), RPN
    low-quality matches to the anchor's own argmax GT; 90k iterations at 16 images, steps 60k/80k,
    LR 0.02, linear warm-up 1000 iterations from 0.001."""
    cfg = faster_rcnn_R_50_FPN_1x()
    m = cfg.model
    m.backbone = BackboneConfig(depth=50, style=BackboneStyle.caffe2, norm=Norm.frozen_bn, frozen_bn_eps=1e-5,
                                freeze_at=2)
    m.input = InputConfig(min_size_train=[640, 800], max_size_train=1333, min_size_test=800, max_size_test=1333,
                          size_divisible=32, to_bgr255=True, pixel_mean=list(DETECTRON2_BGR_MEAN),
                          pixel_std=[1.0, 1.0, 1.0], resize_rule=ResizeRule.mmdet)  # int(side * scale + 0.5)
    m.rcnn.rpn_low_quality = LowQuality.detectron2
    s = cfg.solver
    s.max_iter, s.steps, s.warmup_iters = 90000, [60000, 80000], 1000
    return cfg


def _paa_rpn(cfg: Config) -> Config:
    """kkhoot/PAA_Faster-RCNN's changes (SPEC §3.6): PAA labels + IoU branch in the RPN, proposal score
    sqrt(objectness x IoU), 2000 test proposals, FPN convs without bias."""
    r = cfg.model.rcnn
    r.rpn_paa, r.rpn_paa_iou_threshold, r.rpn_paa_topk = True, 0.1, 9
    r.rpn_post_nms_top_n_test = 2000
    r.fpn_conv_bias = False
    return cfg


def _iounet(cfg: Config, *, loss: IoULoss = IoULoss.smoothl1, step_size: float = 0.5,
            rank_by: IoURank = IoURank.iou) -> Config:
    """thisisi3/OpenMMLab-IoUNet on its host (SPEC §5): PrRoIPool, IoU head (x 5), IoU-guided NMS,
    refinement T 5, score cls x IoU; the published variants differ in the loss, lambda and ranking."""
    cfg.model = with_arch(cfg.model, Arch.iounet)  # with RoIPool.prroi
    i = cfg.model.rcnn.iounet
    i.loss, i.step_size, i.rank_by = loss, step_size, rank_by
    return cfg


def faster_rcnn_R_18_shapes() -> Config:
    """Faster R-CNN on the shapes dataset: the backbone and inputs of ``atss_R_18_shapes``, FPN 64
    channels, anchors 4 x stride (16-256 px), box (and IoU) head 256 wide; RoI counts scaled to the
    small images (~2.5 objects each): proposals 1000 -> 500 in training, 500 -> 300 at test, 256
    sampled RoIs and 256 IoU-balanced RoIs per image."""
    cfg = _with(atss_R_18_shapes(), Arch.faster_rcnn)
    cfg.model.offset, cfg.model.nms_thresh = 0.0, 0.5
    r = cfg.model.rcnn
    r.norm_eval = False
    r.rpn_anchor_scale = 4.0
    r.rpn_pre_nms_top_n_train, r.rpn_post_nms_top_n_train = 1000, 500
    r.rpn_pre_nms_top_n_test, r.rpn_post_nms_top_n_test = 500, 300
    r.box_head_dim = 256
    r.box_batch_size_per_image = 256
    return cfg


def faster_rcnn_R_18_paa_shapes() -> Config:
    """PAA in the RPN on the shapes dataset (twice the test proposals, as the COCO config)."""
    cfg = _paa_rpn(faster_rcnn_R_18_shapes())
    cfg.model.rcnn.rpn_post_nms_top_n_test = 600
    return cfg


def iounet_R_18_shapes() -> Config:
    """IoU-Net (paper-faithful test settings) on the shapes dataset, with the IoU loss weighted 1
    instead of 5: on this small from-scratch model the weight-5 IoU loss dominates the gradient of
    the shared features (2.3x the classifier's at initialisation) and costs the box classifier
    ~17 AP; at weight 1 it helps instead (README, benchmarks/shapes_two_stage.py)."""
    cfg = _iounet(faster_rcnn_R_18_shapes())
    i = cfg.model.rcnn.iounet
    i.head_dim, i.sample_num, i.loss_weight = 256, 256, 1.0
    return cfg


# ------------------------------------------------------------------------------------ the table
_MMDET_VAL = "mmdetection, COCO val"
#: name -> (builder, published AP, note) of the rows that are not generated from ROWS
_NAMED: dict[str, tuple[Callable[[], Config], Optional[float], str]] = {
    "paa_minimal_res50_1x": (lambda: paa_minimal("R_50", "1x", 12), 40.2,
                             "COCO val, batch 12, 120k it (40.5 with model.score_voting=true)"),
    "paa_minimal_res101_2x": (lambda: paa_minimal("R_101", "2x", 10), 44.2,
                              "COCO val, batch 10, 288k it (44.3 with model.score_voting=true)"),
    "atss_R_50_FPN_1x_mmdet": (lambda: mmdet("atss", "R_50", 12, (8, 11)), 39.4, _MMDET_VAL),
    "atss_R_101_FPN_1x_mmdet": (lambda: mmdet("atss", "R_101", 12, (8, 11)), 41.5, _MMDET_VAL),
    "paa_R_50_FPN_1x_mmdet": (lambda: mmdet("paa", "R_50", 12, (8, 11)), 40.4,
                              f"{_MMDET_VAL} (40.2 without score voting)"),
    "paa_R_50_FPN_1.5x_mmdet": (lambda: mmdet("paa", "R_50", 18, (12, 16)), 41.4,
                                f"{_MMDET_VAL} (41.2 without score voting)"),
    "paa_R_50_FPN_2x_mmdet": (lambda: mmdet("paa", "R_50", 24, (16, 22)), 41.6, _MMDET_VAL),
    "paa_R_50_FPN_mstrain_3x_mmdet": (lambda: mmdet("paa", "R_50", 36, (28, 34), True), 43.3, _MMDET_VAL),
    "paa_R_101_FPN_1x_mmdet": (lambda: mmdet("paa", "R_101", 12, (8, 11)), 42.6,
                               f"{_MMDET_VAL} (42.4 without score voting)"),
    "paa_R_101_FPN_2x_mmdet": (lambda: mmdet("paa", "R_101", 24, (16, 22)), 43.5, _MMDET_VAL),
    "paa_R_101_FPN_mstrain_3x_mmdet": (lambda: mmdet("paa", "R_101", 36, (28, 34), True), 45.1, _MMDET_VAL),
    "atss_R_18_shapes": (atss_R_18_shapes, None, ""),
    "atss_R_18_shapes_5min": (atss_R_18_shapes_5min, None, ""),
    "paa_R_18_shapes": (lambda: _paa_head(atss_R_18_shapes()), None, ""),
    "dynamic_atss_R_18_shapes": (lambda: _with(atss_R_18_shapes(), Arch.dynamic_atss), None, ""),
    "faster_rcnn_R_50_FPN_1x": (faster_rcnn_R_50_FPN_1x, 37.6, ""),
    "faster_rcnn_R_50_FPN_detectron2_1x": (faster_rcnn_R_50_FPN_detectron2_1x, 37.989, ""),
    "faster_rcnn_R_50_FPN_paa_1x": (lambda: _paa_rpn(faster_rcnn_R_50_FPN_detectron2_1x()), 39.292, ""),
    "iounet_R_50_FPN_1x": (lambda: _iounet(faster_rcnn_R_50_FPN_1x()), 39.3, ""),
    "iounet_R_50_FPN_bce_1x": (lambda: _iounet(faster_rcnn_R_50_FPN_1x(), loss=IoULoss.bce), 39.6, ""),
    "iounet_R_50_FPN_bce_lambda2_1x": (lambda: _iounet(faster_rcnn_R_50_FPN_1x(), loss=IoULoss.bce, step_size=2.0),
                                       39.7, ""),
    "iounet_R_50_FPN_imprv_1x": (lambda: _iounet(faster_rcnn_R_50_FPN_1x(), loss=IoULoss.bce, step_size=2.0,
                                                 rank_by=IoURank.score_iou), 40.0, ""),
    "faster_rcnn_R_18_shapes": (faster_rcnn_R_18_shapes, None, ""),
    "faster_rcnn_R_18_paa_shapes": (faster_rcnn_R_18_paa_shapes, None, ""),
    "iounet_R_18_shapes": (iounet_R_18_shapes, None, ""),
}


def _table() -> dict[str, Preset]:
    table = {row.name: Preset(lambda row=row: build_row(row), row.ap_minival if row.ap_minival is not None
                              else row.ap_test_dev, row.note) for row in ROWS}
    for name, (build, ap, note) in _NAMED.items():
        if name in table:
            raise AssertionError(f"preset {name} is defined twice")
        table[name] = Preset(build, ap, note)
    return table


#: every preset, by name
PRESETS: dict[str, Preset] = _table()
PUBLISHED_AP: dict[str, Optional[float]] = {name: p.published_ap for name, p in PRESETS.items()}
PUBLISHED_NOTES: dict[str, str] = {name: p.note for name, p in PRESETS.items() if p.note}


def get_preset(name: str) -> Config:
    """A fresh Config of preset ``name``; an unknown name is a ConfigError with close matches."""
    if name not in PRESETS:
        close = [p for p in PRESETS if name.lower() in p.lower()]
        hint = f" Did you mean: {', '.join(close[:5])}?" if close else " Run `assigndet presets` to list them."
        raise ConfigError(f"unknown preset {name!r}.{hint}")
    return PRESETS[name]()


def load_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Preset ``preset`` with ``key=value`` overrides applied (type-checked)."""
    return apply_overrides(get_preset(preset), overrides)


def zoo_names() -> list[str]:
    """The presets of the published model tables (ATSS, PAA, Dynamic ATSS, PAA_minimal, mmdetection)."""
    return [r.name for r in ROWS] + [n for n in _NAMED if n.startswith("paa_minimal") or n.endswith("_mmdet")]


__all__ = ["Preset", "PRESETS", "PUBLISHED_AP", "PUBLISHED_NOTES", "get_preset", "load_config", "ROWS", "build_row"]
