"""The registered presets (``assigndet presets`` lists them)."""
from __future__ import annotations

from .config import BackboneConfig, Config, DataConfig, InputConfig, ModelConfig, SolverConfig, TestConfig, register


@register("atss_R_50_FPN_1x", published_ap=39.3)
def atss_R_50_FPN_1x() -> Config:
    """sfzhang15/ATSS configs/atss/atss_R_50_FPN_1x.yaml (SPEC §2.5)."""
    return Config(model=ModelConfig(arch="atss"), data=DataConfig(root="datasets/coco", train_images="train2017",
                  train_ann="annotations/instances_train2017.json", val_images="val2017",
                  val_ann="annotations/instances_val2017.json"))
