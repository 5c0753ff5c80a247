"""The registered presets (``assigndet presets`` lists them)."""
from __future__ import annotations

from .config import BackboneConfig, Config, DataConfig, InputConfig, ModelConfig, SolverConfig, TestConfig, register
from . import zoo as _zoo  # noqa: F401,E402  (registers every published row; the R-50 presets below are the same)


@register("atss_R_50_FPN_1x", published_ap=39.3)
def atss_R_50_FPN_1x() -> Config:
    """sfzhang15/ATSS configs/atss/atss_R_50_FPN_1x.yaml (SPEC §2.5)."""
    return Config(model=ModelConfig(arch="atss"), data=DataConfig(root="datasets/coco", train_images="train2017",
                  train_ann="annotations/instances_train2017.json", val_images="val2017",
                  val_ann="annotations/instances_val2017.json"))


def _shapes_data() -> DataConfig:
    return DataConfig(root="data/shapes", num_workers=2)


def _shapes_model(arch: str) -> ModelConfig:
    """A small from-scratch detector for the embedded shapes dataset (7 classes, 160-320 px)."""
    return ModelConfig(
        arch=arch,
        num_classes=7,
        backbone=BackboneConfig(depth=18, base_width=32, style="pytorch", norm="bn", freeze_at=0),
        input=InputConfig(min_size_train=[224, 288], max_size_train=384, min_size_test=256, max_size_test=384),
        fpn_channels=64,
        head_convs=2,
        anchor_sizes=[32.0, 64.0, 128.0, 256.0, 512.0],
    )


def _shapes_solver() -> SolverConfig:
    return SolverConfig(ims_per_batch=8, base_lr=0.02, reference_batch=8, max_iter=1000, steps=[750, 900],
                        warmup_iters=100, warmup_factor=0.1, warmup_method="linear", weight_decay=1e-4,
                        checkpoint_period=500, log_period=20, clip_grad_norm=10.0)


@register("atss_R_18_shapes")
def atss_R_18_shapes() -> Config:
    """ATSS on the embedded shapes dataset; what ``assigndet demo`` trains."""
    return Config(model=_shapes_model("atss"), data=_shapes_data(), solver=_shapes_solver(),
                  test=TestConfig(ims_per_batch=8, num_workers=2))


@register("dynamic_atss_R_50_FPN_1x")
def dynamic_atss_R_50_FPN_1x() -> Config:
    """ZTX-100/DLA-Combined-IoUs: the ATSS R-50-FPN 1x config with the dynamic assignment (SPEC §4)."""
    cfg = atss_R_50_FPN_1x()
    cfg.model.arch = "dynamic_atss"
    return cfg


@register("dynamic_atss_R_18_shapes")
def dynamic_atss_R_18_shapes() -> Config:
    cfg = atss_R_18_shapes()
    cfg.model.arch = "dynamic_atss"
    return cfg


def _paa(cfg: Config) -> Config:
    m = cfg.model
    m.arch = "paa"
    m.reg_loss_weight = 1.3
    m.quality_loss_weight = 0.5
    m.paa_iou_threshold = 0.1
    m.score_voting = True
    return cfg


@register("paa_R_50_FPN_1x", published_ap=40.4)
def paa_R_50_FPN_1x() -> Config:
    """kkhoot/PAA configs/paa/paa_R_50_FPN_1x.yaml (SPEC §3.5)."""
    return _paa(atss_R_50_FPN_1x())


@register("paa_R_50_FPN_1.5x", published_ap=41.1)
def paa_R_50_FPN_1_5x() -> Config:
    """kkhoot/PAA configs/paa/paa_R_50_FPN_1.5x.yaml: 135k iterations, steps 90k/120k."""
    cfg = paa_R_50_FPN_1x()
    cfg.solver.max_iter = 135000
    cfg.solver.steps = [90000, 120000]
    return cfg


@register("paa_R_18_shapes")
def paa_R_18_shapes() -> Config:
    return _paa(atss_R_18_shapes())


# ------------------------------------------------------------------------------------------------
# Two-stage detectors: Faster R-CNN, PAA in the RPN, IoU-Net (SPEC §3.6, §5)
# ------------------------------------------------------------------------------------------------

#: mmdetection's ImageNet normalisation of RGB input (torchvision-style ResNet).
_RGB_MEAN = [123.675, 116.28, 103.53]
_RGB_STD = [58.395, 57.12, 57.375]
#: detectron2's MSRA R-50 input: BGR 0..255 minus this mean, std 1.
_DETECTRON2_BGR_MEAN = [103.53, 116.28, 123.675]
#: COCO train2017 images with annotations (117,266) / 16 per batch -> 7,330 iterations per epoch.
_COCO_ITERS_PER_EPOCH_16 = 7330


def _coco_data() -> DataConfig:
    return DataConfig(root="datasets/coco", train_images="train2017", train_ann="annotations/instances_train2017.json",
                      val_images="val2017", val_ann="annotations/instances_val2017.json")


@register("faster_rcnn_R_50_FPN_1x", published_ap=37.6)
def faster_rcnn_R_50_FPN_1x() -> Config:
    """mmdetection v2.14 faster_rcnn_r50_fpn_1x_coco, the host of the IoU-Net reproduction (SPEC §5.1;
    its published 37.6 AP). torchvision-style R-50 (set ``model.backbone.weights=IMAGENET1K_V1`` for
    torchvision://resnet50), BN in eval mode, stem + layer1 frozen, RGB mean/std, 1333x800 (mmcv's
    rounding, OpenCV-like bilinear), no +1;
    12 epochs at 16 images = 87,960 iterations, steps at epochs 8 and 11 (58,640 / 80,630),
    LR 0.02 (linear scaling: the reproduction ran 2 GPUs x 2 images at 0.005), linear warm-up 500
    iterations from 0.001, biases with the same LR and weight decay."""
    e = _COCO_ITERS_PER_EPOCH_16
    model = ModelConfig(
        arch="faster_rcnn", num_classes=80,
        backbone=BackboneConfig(depth=50, style="pytorch", norm="bn", freeze_at=2),
        input=InputConfig(min_size_train=[800], max_size_train=1333, min_size_test=800, max_size_test=1333,
                          size_divisible=32, to_bgr255=False, pixel_mean=list(_RGB_MEAN), pixel_std=list(_RGB_STD),
                          resize_rule="mmdet"),
        fpn_channels=256, offset=0.0, score_thresh=0.05, nms_thresh=0.5, detections_per_img=100)
    solver = SolverConfig(ims_per_batch=16, base_lr=0.02, reference_batch=16, max_iter=12 * e, steps=[8 * e, 11 * e],
                          warmup_iters=500, warmup_factor=0.001, warmup_method="linear", weight_decay=1e-4,
                          weight_decay_bias=1e-4, bias_lr_factor=1.0)
    return Config(model=model, data=_coco_data(), solver=solver)


@register("faster_rcnn_R_50_FPN_detectron2_1x", published_ap=37.989)
def faster_rcnn_R_50_FPN_detectron2_1x() -> Config:
    """The early-detectron2 Faster R-CNN R-50-FPN 1x that PAA_Faster-RCNN starts from (SPEC §3.6; its
    published baseline 37.989 AP): MSRA (caffe2-style) R-50 with FrozenBN, BGR 0..255 input minus the
    mean, std 1, training short side in [640, 800] (detectron2 picks one of 640, 672, ..., 800; here
    any integer in the range), RPN low-quality matches to the anchor's own argmax GT; 90k
    iterations at 16 images, steps 60k/80k, LR 0.02, linear warm-up 1000 iterations from 0.001."""
    cfg = faster_rcnn_R_50_FPN_1x()
    m = cfg.model
    m.backbone = BackboneConfig(depth=50, style="caffe2", norm="frozen_bn", frozen_bn_eps=1e-5, freeze_at=2)
    m.input = InputConfig(min_size_train=[640, 800], max_size_train=1333, min_size_test=800, max_size_test=1333,
                          size_divisible=32, to_bgr255=True, pixel_mean=list(_DETECTRON2_BGR_MEAN),
                          pixel_std=[1.0, 1.0, 1.0], resize_rule="mmdet")  # int(side * scale + 0.5), as detectron2
    m.rcnn.rpn_low_quality = "detectron2"
    s = cfg.solver
    s.max_iter, s.steps, s.warmup_iters = 90000, [60000, 80000], 1000
    return cfg


def _paa_rpn(cfg: Config) -> Config:
    """kkhoot/PAA_Faster-RCNN's changes (SPEC §3.6): PAA labels + IoU branch in the RPN, proposal score
    sqrt(objectness x IoU), 2000 test proposals, FPN convs without bias."""
    r = cfg.model.rcnn
    r.rpn_paa = True
    r.rpn_paa_iou_threshold = 0.1
    r.rpn_paa_topk = 9
    r.rpn_post_nms_top_n_test = 2000
    r.fpn_conv_bias = False
    return cfg


@register("faster_rcnn_R_50_FPN_paa_1x", published_ap=39.292)
def faster_rcnn_R_50_FPN_paa_1x() -> Config:
    """PAA_Faster-RCNN configs/COCO-Detection/faster_rcnn_R_50_FPN_iou_paa_1x.yaml on its detectron2
    host (``faster_rcnn_R_50_FPN_detectron2_1x``, 37.989 -> 39.292 AP)."""
    return _paa_rpn(faster_rcnn_R_50_FPN_detectron2_1x())


def _iounet(cfg: Config, *, loss: str = "smoothl1", step_size: float = 0.5, rank_by: str = "iou") -> Config:
    m = cfg.model
    m.arch = "iounet"
    m.rcnn.roi_pool = "prroi"
    i = m.rcnn.iounet
    i.loss, i.step_size, i.rank_by = loss, step_size, rank_by
    return cfg


@register("iounet_R_50_FPN_1x", published_ap=39.3)
def iounet_R_50_FPN_1x() -> Config:
    """thisisi3/OpenMMLab-IoUNet faster_rcnn_iou_r50_fpn_1x_coco, paper-faithful (SPEC §5): PrRoIPool,
    IoU head with SmoothL1 on normalised targets x 5, IoU-guided NMS ranked by IoU, refinement T 5,
    lambda 0.5, score cls x IoU. Ablation rows (reproduction 37.8 / 38.7 / 39.3):
    ``model.rcnn.iounet.test_iou_head=false``; ``model.rcnn.iounet.refine=false``; this preset."""
    return _iounet(faster_rcnn_R_50_FPN_1x())


@register("iounet_R_50_FPN_bce_1x", published_ap=39.6)
def iounet_R_50_FPN_bce_1x() -> Config:
    """faster_rcnn_iou_r50_fpn_bce_1x_coco: the IoU head trained with BCE (x 5)."""
    return _iounet(faster_rcnn_R_50_FPN_1x(), loss="bce")


@register("iounet_R_50_FPN_bce_lambda2_1x", published_ap=39.7)
def iounet_R_50_FPN_bce_lambda2_1x() -> Config:
    """BCE IoU loss and refinement step lambda = 2.0 (the reproduction's README)."""
    return _iounet(faster_rcnn_R_50_FPN_1x(), loss="bce", step_size=2.0)


@register("iounet_R_50_FPN_imprv_1x", published_ap=40.0)
def iounet_R_50_FPN_imprv_1x() -> Config:
    """faster_rcnn_iou_r50_fpn_imprv_1x_coco: BCE, lambda 2.0, IoU-guided NMS ranked by cls x IoU."""
    return _iounet(faster_rcnn_R_50_FPN_1x(), loss="bce", step_size=2.0, rank_by="score_iou")


@register("faster_rcnn_R_18_shapes")
def faster_rcnn_R_18_shapes() -> Config:
    """Faster R-CNN on the embedded shapes dataset: the small from-scratch R-18 (base width 32, BN) and
    inputs of ``atss_R_18_shapes``, FPN 64 channels, anchors 4 x stride (16-256 px), box (and IoU)
    head 256 wide; RoI counts scaled to the small images (~2.5 objects each): proposals 1000 -> 500
    in training, 500 -> 300 at test, 256 sampled RoIs and 256 IoU-balanced RoIs per image."""
    cfg = atss_R_18_shapes()
    m = cfg.model
    m.arch = "faster_rcnn"
    m.offset = 0.0
    m.nms_thresh = 0.5
    r = m.rcnn
    r.norm_eval = False
    r.rpn_anchor_scale = 4.0
    r.rpn_pre_nms_top_n_train, r.rpn_post_nms_top_n_train = 1000, 500
    r.rpn_pre_nms_top_n_test, r.rpn_post_nms_top_n_test = 500, 300
    r.box_head_dim = 256
    r.box_batch_size_per_image = 256
    r.iounet.head_dim = 256
    r.iounet.sample_num = 256
    return cfg


@register("faster_rcnn_R_18_paa_shapes")
def faster_rcnn_R_18_paa_shapes() -> Config:
    """PAA in the RPN on the shapes dataset (twice the test proposals, as the COCO config)."""
    cfg = _paa_rpn(faster_rcnn_R_18_shapes())
    cfg.model.rcnn.rpn_post_nms_top_n_test = 600
    return cfg


@register("iounet_R_18_shapes")
def iounet_R_18_shapes() -> Config:
    """IoU-Net (paper-faithful test settings) on the shapes dataset, with the IoU loss weighted 1
    instead of 5: on this small from-scratch model the weight-5 IoU loss dominates the gradient of
    the shared features (2.3x the classifier's at initialisation) and costs the box classifier
    ~17 AP; at weight 1 it helps instead (README, benchmarks/shapes_two_stage.py)."""
    cfg = _iounet(faster_rcnn_R_18_shapes())
    cfg.model.rcnn.iounet.loss_weight = 1.0
    return cfg
