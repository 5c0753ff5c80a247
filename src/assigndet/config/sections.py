"""The sections of a config that every architecture shares or that nest in a model config:
backbone, input, TTA, R-CNN / IoU-Net, data, solver, test. Each checks its values when built."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..variants import (AMP, BackboneStyle, IoULoss, IoURank, LowQuality, Norm, Optimizer, ResizeRule, RoIPool, TTAMerge,
                        Warmup)
from .rules import check_section

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

    __post_init__ = check_section


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

    __post_init__ = check_section


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

    __post_init__ = check_section


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

    __post_init__ = check_section


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

    __post_init__ = check_section


@dataclass
class IoUNetRCNNConfig(RCNNConfig):
    """The R-CNN settings of IoU-Net: Faster R-CNN's plus its IoU branch (``model.rcnn.iounet``)."""

    roi_pool: RoIPool = RoIPool.prroi  # the refinement needs the gradient with respect to the boxes
    iounet: IoUNetConfig = field(default_factory=IoUNetConfig)


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

    __post_init__ = check_section


@dataclass
class SolverConfig:
    ims_per_batch: int = 16  # total over all processes
    base_lr: float = 0.01  # for reference_batch images; scaled linearly with ims_per_batch
    reference_batch: int = 16
    optimizer: Optimizer = Optimizer.sgd
    momentum: float = 0.9  # SGD's momentum; AdamW's first beta
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

    __post_init__ = check_section


@dataclass
class TestConfig:
    ims_per_batch: int = 8
    max_images: int = 0  # validate on the first N images only (0 = all)
    num_workers: int = 2

    __post_init__ = check_section
