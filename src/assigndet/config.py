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
    prior_prob: float = 0.01
    anchor_sizes: list[float] = field(default_factory=lambda: [64.0, 128.0, 256.0, 512.0, 1024.0])
    anchor_strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    anchor_aspect_ratios: list[float] = field(default_factory=lambda: [1.0])
    anchor_scales_per_octave: int = 1
    anchor_style: str = "mrcnn"  # "mrcnn": centre s/2, inclusive widths; "mmdet": centre 0
    offset: float = 1.0  # +1 pixel convention (1.0 original, 0.0 modern)
    topk: int = 9
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    reg_loss_weight: float = 2.0
    quality_loss_weight: float = 1.0
    # PAA
    paa_iou_threshold: float = 0.1
    paa_variant: str = "original"  # "original" | "mmdet"
    # inference
    score_thresh: float = 0.05
    pre_nms_top_n: int = 1000
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    score_voting: bool = False
    score_voting_sigma: float = 0.025


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
