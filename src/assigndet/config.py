"""Typed configuration schemas: one dataclass per section, one model config per architecture.

Every named choice is an enum of :mod:`assigndet.variants`, so OmegaConf checks it when a config
is built (``model.paa_variant=bogus`` fails there with the valid spellings) and the code below
compares it by identity. The model config of each architecture carries only its own fields:
:class:`ModelConfig` holds what every detector has, :class:`DenseFields` what the dense
detectors (ATSS, PAA, Dynamic ATSS) add, :class:`PAAFields` what PAA adds; the two-stage
detectors add their ``rcnn`` section (with ``rcnn.iounet`` for IoU-Net only).

The presets (named configs) are in :mod:`assigndet.presets`; this module knows none of them.
``key=value`` overrides (:func:`apply_overrides`) are parsed and type-checked by OmegaConf against
these dataclasses; ``model.arch=X`` switches the model section to architecture X first.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .variants import (AMP, Arch, BackboneStyle, HeadNorm, IoULoss, IoURank, LossNormalizer, LowQuality, Norm,
                       PAAVariant, Postprocess, ResizeRule, RoIPool, TTAMerge, Convention, Warmup)

#: maskrcnn-benchmark / Detectron caffe2 pixel mean, BGR order, 0..255 scale.
CAFFE2_PIXEL_MEAN = (102.9801, 115.9465, 122.7717)


@dataclass
class BackboneConfig:
    depth: int = 50  # 18, 34, 50, 101, 152
    groups: int = 1  # ResNeXt cardinality (32 or 64)
    width_per_group: int = 64  # ResNeXt: 8 or 4
    style: BackboneStyle = BackboneStyle.caffe2  # "caffe2": stride in the 1x1 conv; "pytorch": stride in the 3x3 conv
    norm: Norm = Norm.frozen_bn
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
    resize_rule: ResizeRule = ResizeRule.mrcnn


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
    merge: TTAMerge = TTAMerge["soft-vote"]  # only with vote=True
    detections_per_img: int = 1000  # the merged result keeps PRE_NMS_TOP_N detections, not 100


@dataclass
class IoUNetConfig:
    """IoU-Net's IoU branch (SPEC §5.2-5.3)."""

    head_dim: int = 1024  # IoU head: 256*7*7 -> head_dim -> head_dim -> C (class-aware)
    loss: IoULoss = IoULoss.smoothl1  # SmoothL1(beta 1) on (u - 0.5) / 0.5 (paper) | BCE on u
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
    rank_by: IoURank = IoURank.iou  # iou (paper, guide "rank") | score_iou (improved, guide "weight") | score
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
    IoU-Net (§5.2). Final-detection settings
    are ``model.score_thresh``, ``model.nms_thresh`` and ``model.detections_per_img``."""

    norm_eval: bool = True  # backbone BatchNorm layers stay in eval mode (mmdetection norm_eval)
    fpn_conv_bias: bool = True  # PAA_Faster-RCNN builds the FPN convs without bias
    # RPN: anchors anchor_scale * stride x ratios on P2-P6
    rpn_anchor_scale: float = 8.0
    rpn_aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_low_quality: LowQuality = LowQuality.mmdet
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
    roi_pool: RoIPool = RoIPool.roi_align  # RoIAlign (aligned, P2-P5) | Precise RoI Pooling
    roi_output_size: int = 7
    roi_sampling_ratio: int = 0
    box_head_dim: int = 1024
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_reg_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])


@dataclass
class IoUNetRCNNConfig(RCNNConfig):
    """The R-CNN settings of IoU-Net: Faster R-CNN's plus its IoU branch (``model.rcnn.iounet``)."""

    iounet: IoUNetConfig = field(default_factory=IoUNetConfig)


@dataclass
class ModelConfig:
    """What every detector has. Use one of the per-architecture classes below (``MODEL_CONFIGS``)."""

    arch: Arch = Arch.atss
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    input: InputConfig = field(default_factory=InputConfig)
    fpn_channels: int = 256
    offset: float = 1.0  # +1 pixel convention (1.0 original, 0.0 modern)
    # inference
    score_thresh: float = 0.05
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    # fine-tuning: load a checkpoint trained for another class count; the classifier keeps its
    # fresh initialisation (logged) instead of failing on the shape mismatch
    reinit_classifier: bool = False

    def __post_init__(self) -> None:
        own = ARCH_OF.get(type(self))
        if own is not None and self.arch is not own:
            raise ConfigError(f"model.arch={self.arch} does not fit a {type(self).__name__} (arch {own}); "
                              "switch architectures with the override model.arch=NAME")


@dataclass
class DenseFields:
    """The dense detectors' fields (backbone + FPN P3-P7 + head + anchors)."""

    fpn_relu_before_p7: bool = True  # original: P7 = conv(ReLU(P6)); mmdetection: no ReLU
    head_convs: int = 4
    head_conv_bias: bool = True
    head_norm: HeadNorm = HeadNorm.gn
    head_dcn: bool = False  # modulated DCN v2 as the last conv of each tower (USE_DCN_IN_TOWER)
    prior_prob: float = 0.01
    anchor_sizes: list[float] = field(default_factory=lambda: [64.0, 128.0, 256.0, 512.0, 1024.0])
    anchor_strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    anchor_aspect_ratios: list[float] = field(default_factory=lambda: [1.0])
    anchor_scales_per_octave: int = 1
    anchor_style: Convention = Convention.mrcnn  # mrcnn: centre s/2, inclusive widths; mmdet: centre 0
    coder_symmetric_clamp: bool = False  # mmdetection clamps |dw|, |dh| <= ln(1000/16); the original only above
    topk: int = 9
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    reg_loss_weight: float = 2.0
    quality_loss_weight: float = 1.0
    loss_normalizer: LossNormalizer = LossNormalizer["global"]  # global: N_pos etc. averaged over processes
    pre_nms_top_n: int = 1000
    score_voting: bool = False
    score_voting_sigma: float = 0.025
    postprocess: Postprocess = Postprocess.original  # original (SPEC §1.9) | mmdet (SPEC §6)
    tta: TTAConfig = field(default_factory=TTAConfig)


@dataclass
class PAAFields:
    paa_iou_threshold: float = 0.1
    # original | mmdet (mmdetection's port: step A, GIoU 1.3 scores, cut, cls normaliser) |
    # minimal (PAA_minimal's cut, SPEC §3.7)
    paa_variant: PAAVariant = PAAVariant.original


@dataclass
class ATSSModelConfig(DenseFields, ModelConfig):
    arch: Arch = Arch.atss


@dataclass
class DynamicATSSModelConfig(DenseFields, ModelConfig):
    arch: Arch = Arch.dynamic_atss


@dataclass
class PAAModelConfig(PAAFields, DenseFields, ModelConfig):
    arch: Arch = Arch.paa


@dataclass
class FasterRCNNModelConfig(ModelConfig):
    """Faster R-CNN (and PAA in its RPN); final-detection settings are the common
    ``score_thresh``, ``nms_thresh`` and ``detections_per_img``."""

    arch: Arch = Arch.faster_rcnn
    rcnn: RCNNConfig = field(default_factory=RCNNConfig)


@dataclass
class IoUNetModelConfig(ModelConfig):
    arch: Arch = Arch.iounet
    rcnn: IoUNetRCNNConfig = field(default_factory=IoUNetRCNNConfig)


#: the model config class of each architecture
MODEL_CONFIGS: dict[Arch, type[ModelConfig]] = {
    Arch.atss: ATSSModelConfig, Arch.dynamic_atss: DynamicATSSModelConfig, Arch.paa: PAAModelConfig,
    Arch.faster_rcnn: FasterRCNNModelConfig, Arch.iounet: IoUNetModelConfig}
ARCH_OF: dict[type, Arch] = {cls: arch for arch, cls in MODEL_CONFIGS.items()}
DENSE_ARCHS = (Arch.atss, Arch.paa, Arch.dynamic_atss)


def model_config(arch: Arch | str, **fields) -> ModelConfig:
    """The model config of architecture ``arch`` with ``fields`` set (the others default)."""
    arch = Arch(arch)
    return MODEL_CONFIGS[arch](arch=arch, **fields)


def with_arch(model: ModelConfig, arch: Arch | str) -> ModelConfig:
    """``model`` as architecture ``arch``: every field the two share is kept, the new ones default
    (an ATSS config becomes the PAA config with the same backbone, input, anchors and losses)."""
    arch = Arch(arch)
    cls = MODEL_CONFIGS[arch]
    shared = {f.name: getattr(model, f.name) for f in dataclasses.fields(cls)
              if f.name != "arch" and hasattr(model, f.name)}
    if arch is Arch.iounet and isinstance(shared.get("rcnn"), RCNNConfig) and \
            not isinstance(shared["rcnn"], IoUNetRCNNConfig):
        shared["rcnn"] = IoUNetRCNNConfig(**dataclasses.asdict(shared["rcnn"]))
    if arch is Arch.faster_rcnn and isinstance(shared.get("rcnn"), IoUNetRCNNConfig):
        rcnn = dataclasses.asdict(shared["rcnn"])
        rcnn.pop("iounet")
        shared["rcnn"] = RCNNConfig(**rcnn)
    return cls(arch=arch, **shared)


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
    warmup_method: Warmup = Warmup.constant
    clip_grad_norm: float = 0.0  # 0 = off
    amp: AMP = AMP.off  # bf16 on CPU or CUDA, fp16 on CUDA
    checkpoint_period: int = 5000
    keep_last: int = 3  # periodic checkpoints kept on disk (the final one and the newest always stay)
    sync_bn: bool = True  # under DDP, BatchNorm layers (not FrozenBN) become SyncBatchNorm
    eval_period: int = 0  # 0 = only at the end
    log_period: int = 20


@dataclass
class TestConfig:
    ims_per_batch: int = 8
    max_images: int = 0  # validate on the first N images only (0 = all)
    num_workers: int = 2


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ATSSModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    deterministic: bool = False


# ------------------------------------------------------------------------------------ overrides
def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0]


def _parse(value: str):
    """OmegaConf's own parsing of a single value: lists "[1,2]", numbers, bools, null, strings."""
    if value == "":
        return ""
    try:
        return OmegaConf.from_dotlist([f"v={value}"]).v
    except OmegaConfBaseException:
        return value


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    return key.strip(), value


def _switch_arch(cfg: Config, overrides: list[str]) -> Config:
    """Apply a ``model.arch=X`` override first: the model section becomes architecture X."""
    for item in overrides:
        key, value = _split(item)
        if key == "model.arch":
            try:
                arch = Arch(str(_parse(value)))
            except ValueError as e:
                raise ConfigError(f"bad override {item!r}: {e}") from None
            cfg = dataclasses.replace(cfg, model=with_arch(cfg.model, arch))
    return cfg


def _build(node, where: str) -> Config:
    """The dataclass object of an OmegaConf node; schema errors become one-line ConfigErrors."""
    try:
        return OmegaConf.to_object(node)  # type: ignore[return-value]
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {_first_line(e)}") from None


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``key=value`` overrides, type-checked against the schema."""
    overrides = list(overrides)
    base = OmegaConf.structured(_switch_arch(cfg, overrides))
    for item in overrides:
        key, value = _split(item)
        if key == "model.arch":
            continue
        try:
            OmegaConf.update(base, key, _parse(value), merge=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad override {item!r}: {_first_line(e)}") from None
    return _build(base, "bad overrides " + " ".join(overrides) if overrides else "config")


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml(path: str) -> Config:
    """A config saved by :func:`config_to_yaml` (``config.yaml`` beside the checkpoints)."""
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001  (YAML and OS errors come in many types)
        raise ConfigError(f"cannot read config file {path}: {_first_line(e)}") from None
    arch = OmegaConf.select(loaded, "model.arch", default=Arch.atss.value)
    try:
        model_cls = MODEL_CONFIGS[Arch(str(arch))]
    except ValueError as e:
        raise ConfigError(f"{path}: model.arch: {e}") from None
    base = OmegaConf.structured(Config(model=model_cls()))
    try:
        merged = OmegaConf.merge(base, loaded)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_first_line(e)}") from None
    return _build(merged, path)


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)


__all__ = ["ConfigError", "BackboneConfig", "InputConfig", "TTAConfig", "IoUNetConfig", "RCNNConfig",
           "IoUNetRCNNConfig", "ModelConfig", "DenseFields", "PAAFields", "ATSSModelConfig", "DynamicATSSModelConfig",
           "PAAModelConfig", "FasterRCNNModelConfig", "IoUNetModelConfig", "MODEL_CONFIGS", "DENSE_ARCHS",
           "model_config", "with_arch", "DataConfig", "SolverConfig", "TestConfig", "Config", "apply_overrides",
           "config_to_yaml", "config_from_yaml", "CAFFE2_PIXEL_MEAN"]
