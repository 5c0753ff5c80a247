"""Typed configuration: dataclass schemas, the ``PRESETS`` registry and ``key=value`` overrides.

A preset is a plain function returning a :class:`Config`; presets are named after the model
tables of the original papers (``atss_R_50_FPN_1x``) plus small presets for the embedded
"shapes" dataset. Overrides are parsed and type-checked by OmegaConf against the dataclasses.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

#: maskrcnn-benchmark / Detectron caffe2 pixel mean, BGR order, 0..255 scale.
CAFFE2_PIXEL_MEAN = (102.9801, 115.9465, 122.7717)


class ConfigError(ValueError):
    """A bad preset name, override key or value."""


@dataclass
class BackboneConfig:
    depth: int = 50  # 18, 34, 50, 101, 152
    groups: int = 1  # ResNeXt cardinality (32 or 64)
    width_per_group: int = 64  # ResNeXt: 8 or 4
    style: str = "caffe2"  # "caffe2": stride in the 1x1 conv; "pytorch": stride in the 3x3 conv
    norm: str = "frozen_bn"  # "frozen_bn" | "bn" | "gn"
    frozen_bn_eps: float = 0.0  # 0 = the original's FrozenBN; torchvision uses 1e-5
    freeze_at: int = 2  # 0: nothing frozen; 1: stem; 2: stem + layer1 (FREEZE_CONV_BODY_AT)
    weights: Optional[str] = None  # torchvision weight enum ("IMAGENET1K_V1") or a local file
    base_width: int = 64  # stem/first-stage width (64 for every ResNet; smaller for tiny presets)
    # modulated DCN v2 in place of the 3x3 conv of every block of stage c2..c5 (STAGE_WITH_DCN)
    stage_with_dcn: list[bool] = field(default_factory=lambda: [False, False, False, False])


@dataclass
class InputConfig:
    min_size_train: list[int] = field(default_factory=lambda: [800])  # one value or [lo, hi] range
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    size_divisible: int = 32
    to_bgr255: bool = True  # caffe2 convention: BGR, 0..255
    pixel_mean: list[float] = field(default_factory=lambda: list(CAFFE2_PIXEL_MEAN))
    pixel_std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    # "mrcnn": short side S, long side truncated (maskrcnn-benchmark); "minimal": int(scale * side)
    # with scale = min(S / short, max / long) (PAA_minimal); "mmdet": the same scale, rounded to
    # nearest and resized like OpenCV (bilinear, no antialias)
    resize_rule: str = "mrcnn"


@dataclass
class TTAConfig:
    """Test-time augmentation of SPEC §1.10 (``TEST.BBOX_AUG``); switched on by ``enabled``."""

    enabled: bool = False
    hflip: bool = True  # also run the test-size image flipped
    scales: list[int] = field(default_factory=lambda: [400, 500, 600, 640, 700, 900, 1000, 1100, 1200, 1300,
                                                       1400, 1800])
    # boxes of scale i are kept when lo^2 < (w + 1)(h + 1) < hi^2
    scale_ranges: list[list[float]] = field(default_factory=lambda: [
        [96, 10000], [96, 10000], [64, 10000], [64, 10000], [64, 10000], [0, 10000], [0, 10000], [0, 256],
        [0, 256], [0, 192], [0, 192], [0, 96]])
    max_size: int = 3000  # cap of the long side for scales >= 800 (smaller scales use max_size_test)
    scale_hflip: bool = True
    vote: bool = True  # per-run NMS/top-k (+ score voting), then the vote merge
    vote_thresh: float = 0.66
    merge: str = "soft-vote"  # "soft-vote" | "vote" (only with vote=True)
    detections_per_img: int = 1000  # the merged result keeps PRE_NMS_TOP_N detections, not 100


@dataclass
class IoUNetConfig:
    """IoU-Net's IoU branch (SPEC §5.2-5.3); used by ``model.arch=iounet``."""

    head_dim: int = 1024  # IoU head: 256*7*7 -> head_dim -> head_dim -> C (class-aware)
    loss: str = "smoothl1"  # "smoothl1": SmoothL1(beta 1) on (u - 0.5) / 0.5 (paper) | "bce": BCE on u
    loss_weight: float = 5.0
    # IoU-balanced RoI generator (training only)
    pre_sample: int = 4000  # deltas kept per IoU bin at construction
    xy_steps: int = 16
    wh_steps: int = 16
    area_range: list[float] = field(default_factory=lambda: [1.0 / 3, 3.0])
    nonlinearity: int = 2
    start_bin: int = 5  # IoU bins start_bin..9 (IoU >= 0.5) are sampled
    sample_num: int = 1000  # RoIs per image
    pos_iou_thresh: float = 0.5  # MaxIoU assignment of the generated RoIs; only positives are kept
    # not in the reference: the IoU loss trains the IoU head only, not the FPN/backbone
    detach_features: bool = False
    # inference (the ablation switches)
    test_iou_head: bool = True  # False: IoU head unused at test (plain Faster R-CNN post-processing)
    iou_nms: bool = True  # False: plain NMS ranked by the class score (rank_by "score")
    rank_by: str = "iou"  # "iou" (paper, guide "rank") | "score_iou" (improved, guide "weight") | "score"
    refine: bool = True  # optimisation-based refinement of the first pre_refine kept boxes
    pre_refine: int = 100
    steps: int = 5  # T
    omega1: float = 0.001
    omega2: float = -0.01
    step_size: float = 0.5  # lambda (0.5 paper, 2.0 improved)
    use_iou_score: bool = True  # after refinement: final score = cls score x predicted IoU


@dataclass
class RCNNConfig:
    """Faster R-CNN R-50-FPN (mmdetection v2.14 conventions, SPEC §5.1), PAA in the RPN (§3.6) and
    IoU-Net (§5.2); used by ``model.arch`` = ``faster_rcnn`` | ``iounet``. Final-detection settings
    are ``model.score_thresh``, ``model.nms_thresh`` and ``model.detections_per_img``."""

    norm_eval: bool = True  # backbone BatchNorm layers stay in eval mode (mmdetection norm_eval)
    fpn_conv_bias: bool = True  # PAA_Faster-RCNN builds the FPN convs without bias
    # RPN: anchors anchor_scale * stride x ratios on P2-P6
    rpn_anchor_scale: float = 8.0
    rpn_aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_low_quality: str = "mmdet"  # "mmdet": best anchors of a GT (IoU >= bg thresh) go to that GT;
    # "detectron2": best anchors of a GT (any IoU) are positive with their own argmax GT
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000  # per level
    rpn_post_nms_top_n_train: int = 1000  # per image
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    # PAA in the RPN (kkhoot/PAA_Faster-RCNN)
    rpn_paa: bool = False
    rpn_paa_iou_threshold: float = 0.1
    rpn_paa_topk: int = 9
    # RoI head
    roi_pool: str = "roi_align"  # "roi_align" (RoIAlign aligned, P2-P5) | "prroi" (Precise RoI Pooling)
    roi_output_size: int = 7
    roi_sampling_ratio: int = 0
    box_head_dim: int = 1024
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_reg_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    iounet: IoUNetConfig = field(default_factory=IoUNetConfig)


@dataclass
class ModelConfig:
    arch: str = "atss"  # atss | paa | dynamic_atss
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    input: InputConfig = field(default_factory=InputConfig)
    fpn_channels: int = 256
    fpn_relu_before_p7: bool = True  # original: P7 = conv(ReLU(P6)); mmdetection: no ReLU
    head_convs: int = 4
    head_conv_bias: bool = True
    head_norm: str = "gn"  # "gn" | "none"
    head_dcn: bool = False  # modulated DCN v2 as the last conv of each tower (USE_DCN_IN_TOWER)
    prior_prob: float = 0.01
    anchor_sizes: list[float] = field(default_factory=lambda: [64.0, 128.0, 256.0, 512.0, 1024.0])
    anchor_strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    anchor_aspect_ratios: list[float] = field(default_factory=lambda: [1.0])
    anchor_scales_per_octave: int = 1
    anchor_style: str = "mrcnn"  # "mrcnn": centre s/2, inclusive widths; "mmdet": centre 0
    offset: float = 1.0  # +1 pixel convention (1.0 original, 0.0 modern)
    coder_symmetric_clamp: bool = False  # mmdetection clamps |dw|, |dh| <= ln(1000/16); the original only above
    topk: int = 9
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    reg_loss_weight: float = 2.0
    quality_loss_weight: float = 1.0
    # PAA
    paa_iou_threshold: float = 0.1
    paa_variant: str = "original"  # "original" | "mmdet" (mmdetection's port: step A, GIoU 1.3 scores, cut, cls normaliser) | "minimal" (PAA_minimal's cut, SPEC §3.7)
    loss_normalizer: str = "global"  # "global": N_pos etc. averaged over processes; "local": per process
    # inference
    score_thresh: float = 0.05
    pre_nms_top_n: int = 1000
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    score_voting: bool = False
    score_voting_sigma: float = 0.025
    postprocess: str = "original"  # "original" (SPEC §1.9) | "mmdet" (mmdetection's ATSS / PAA rules, SPEC §6)
    # fine-tuning: load a checkpoint trained for another class count; the classifier keeps its
    # fresh initialisation (logged) instead of failing on the shape mismatch
    reinit_classifier: bool = False
    tta: TTAConfig = field(default_factory=TTAConfig)
    # two-stage detectors (faster_rcnn, iounet)
    rcnn: RCNNConfig = field(default_factory=RCNNConfig)


@dataclass
class DataConfig:
    root: str = "data/shapes"
    train_images: str = "train"  # relative to root unless absolute
    train_ann: str = "annotations/instances_train.json"
    val_images: str = "val"
    val_ann: str = "annotations/instances_val.json"
    filter_empty: bool = True  # SPEC §1.2 training-image filter
    skip_corrupt: bool = False
    num_workers: int = 2
    aspect_grouping: bool = True
    hflip_prob: float = 0.5


@dataclass
class SolverConfig:
    ims_per_batch: int = 16  # total over all processes
    base_lr: float = 0.01  # for reference_batch images; scaled linearly with ims_per_batch
    reference_batch: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_bias: float = 0.0
    bias_lr_factor: float = 2.0
    max_iter: int = 90000
    steps: list[int] = field(default_factory=lambda: [60000, 80000])
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3
    warmup_method: str = "constant"  # "constant" | "linear"
    clip_grad_norm: float = 0.0  # 0 = off
    amp: str = "off"  # "off" | "bf16" | "fp16"
    checkpoint_period: int = 5000
    eval_period: int = 0  # 0 = only at the end
    log_period: int = 20


@dataclass
class TestConfig:
    ims_per_batch: int = 8
    max_images: int = 0  # validate on the first N images only (0 = all)
    num_workers: int = 2


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    deterministic: bool = False


PRESETS: dict[str, Callable[[], Config]] = {}
PUBLISHED_AP: dict[str, Optional[float]] = {}


def register(name: str, published_ap: Optional[float] = None):
    def deco(fn: Callable[[], Config]) -> Callable[[], Config]:
        PRESETS[name] = fn
        PUBLISHED_AP[name] = published_ap
        return fn

    return deco


def get_preset(name: str) -> Config:
    from . import presets  # noqa: F401  (registers the presets)

    if name not in PRESETS:
        close = [p for p in PRESETS if name.lower() in p.lower()]
        hint = f" Did you mean: {', '.join(close[:5])}?" if close else " Run `assigndet presets` to list them."
        raise ConfigError(f"unknown preset {name!r}.{hint}")
    return PRESETS[name]()


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``key=value`` overrides, type-checked against the schema."""
    base = OmegaConf.structured(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        try:
            OmegaConf.update(base, key, OmegaConf.create({"v": value}).v if value == "" else _parse(value), merge=True)
        except OmegaConfBaseException as e:
            msg = str(e).splitlines()[0]
            raise ConfigError(f"bad override {item!r}: {msg}") from None
    return OmegaConf.to_object(base)  # type: ignore[return-value]


def _parse(value: str):
    # OmegaConf's own YAML-ish parsing of a single value: lists "[1,2]", numbers, bools, null
    try:
        return OmegaConf.create({"v": OmegaConf.from_dotlist([f"v={value}"]).v}).v
    except OmegaConfBaseException:
        return value


def load_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    return apply_overrides(get_preset(preset), overrides)


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml(path: str) -> Config:
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    base = OmegaConf.structured(Config())
    try:
        return OmegaConf.to_object(OmegaConf.merge(base, loaded))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)
