"""The registered presets (``assigndet presets`` lists them)."""
from __future__ import annotations

from .config import BackboneConfig, Config, DataConfig, InputConfig, ModelConfig, SolverConfig, TestConfig, register


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
    return SolverConfig(ims_per_batch=8, base_lr=0.02, reference_batch=8, max_iter=1500, steps=[1100, 1350],
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
