"""One model config per architecture: :class:`ModelConfig` holds what every detector has,
:class:`DenseFields` what the dense detectors add, :class:`PAAFields` what PAA adds; the two-stage
detectors add their ``rcnn`` section (with ``rcnn.iounet`` for IoU-Net only). :class:`Config` is
the whole run: model, data, solver, test."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..variants import Arch, Convention, HeadNorm, LossNormalizer, PAAVariant, Postprocess, RoIPool
from .rules import check_section
from .sections import (BackboneConfig, DataConfig, InputConfig, IoUNetRCNNConfig, RCNNConfig, SolverConfig, TestConfig,
                       TTAConfig)


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
    # the fast path (nn/fastpath.py): BatchNorm folded into the conv before it where it is frozen or
    # evaluating, ReLU and residual sums fused into the conv and channels-last on CPU, the dense head
    # layer by layer over the levels; the same results to float rounding. false: the plain modules
    fast_path: bool = True

    def __post_init__(self) -> None:
        check_section(self)
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

    def __post_init__(self) -> None:
        ModelConfig.__post_init__(self)
        if self.rcnn.roi_pool is not RoIPool.prroi:
            raise ConfigError(f"model.rcnn.roi_pool={self.rcnn.roi_pool}: IoU-Net needs prroi (its refinement "
                              "differentiates the pooled features with respect to the boxes)")


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
        rcnn = dataclasses.asdict(shared["rcnn"])
        rcnn["roi_pool"] = RoIPool.prroi  # IoU-Net pools with PrRoIPool (its refinement needs the box gradient)
        shared["rcnn"] = IoUNetRCNNConfig(**rcnn)
    if arch is Arch.faster_rcnn and isinstance(shared.get("rcnn"), IoUNetRCNNConfig):
        rcnn = dataclasses.asdict(shared["rcnn"])
        rcnn.pop("iounet")
        shared["rcnn"] = RCNNConfig(**rcnn)
    return cls(arch=arch, **shared)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ATSSModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    deterministic: bool = False

    __post_init__ = check_section
