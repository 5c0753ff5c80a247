"""The config schema: typed choices checked when a config is built, one model config per
architecture, the ``model.arch`` switch, YAML round trips."""
from __future__ import annotations

import dataclasses

import pytest

from assigndet.config import (ATSSModelConfig, Config, ConfigError, FasterRCNNModelConfig, IoUNetModelConfig,
                              MODEL_CONFIGS, PAAModelConfig, apply_overrides, config_from_yaml, config_to_yaml,
                              model_config, with_arch)
from assigndet.presets import PRESETS, get_preset, load_config
from assigndet.variants import AMP, Arch, LossNormalizer, PAAVariant, TTAMerge


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_each_architecture_carries_only_its_own_fields():
    rcnn = _fields(FasterRCNNModelConfig)
    assert not rcnn & {"topk", "paa_variant", "tta", "anchor_style", "score_voting", "head_convs"}
    assert "iounet" not in _fields(type(FasterRCNNModelConfig().rcnn))
    assert "iounet" in _fields(type(IoUNetModelConfig().rcnn))
    assert not _fields(ATSSModelConfig) & {"paa_variant", "paa_iou_threshold", "rcnn"}
    assert {"paa_variant", "paa_iou_threshold", "topk", "tta"} <= _fields(PAAModelConfig)
    for arch, cls in MODEL_CONFIGS.items():
        assert cls().arch is arch


@pytest.mark.parametrize("override,message", [
    ("model.paa_variant=bogus", "expected one of [original, mmdet, minimal]"),
    ("solver.amp=fp32", "expected one of [off, bf16, fp16]"),
    ("model.loss_normalizer=globl", "expected one of [global, local]"),
    ("model.topk=abc", "could not be converted to Integer"),
    ("model.rcnn.roi_pool=prroi", "Key 'rcnn' not in 'PAAModelConfig'"),
    ("model.arch=yolo", "not a valid Arch"),
    ("model.nonexistent=1", "Key 'nonexistent' not in"),
    ("model.topk", "not of the form key=value"),
])
def test_bad_overrides_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("paa_R_18_shapes", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_choices_become_enum_members_spelled_as_in_config_files():
    cfg = load_config("paa_R_18_shapes", ["model.paa_variant=mmdet", "model.loss_normalizer=local",
                                          "model.tta.merge=vote", "solver.amp=bf16"])
    m = cfg.model
    assert m.paa_variant is PAAVariant.mmdet and m.loss_normalizer is LossNormalizer.local
    assert m.tta.merge is TTAMerge.vote and cfg.solver.amp is AMP.bf16
    text = config_to_yaml(cfg)
    assert "paa_variant: mmdet" in text and "loss_normalizer: local" in text and "merge: vote" in text


def test_arch_override_switches_the_model_section_keeping_shared_fields():
    cfg = load_config("atss_R_18_shapes", ["model.arch=paa", "model.paa_variant=minimal", "model.topk=7"])
    assert isinstance(cfg.model, PAAModelConfig) and cfg.model.paa_variant is PAAVariant.minimal
    base = get_preset("atss_R_18_shapes").model
    assert cfg.model.topk == 7 and cfg.model.backbone == base.backbone and cfg.model.anchor_sizes == base.anchor_sizes
    two = load_config("atss_R_18_shapes", ["model.arch=faster_rcnn"]).model
    assert isinstance(two, FasterRCNNModelConfig) and two.num_classes == 7 and not hasattr(two, "topk")


def test_arch_field_must_match_its_class():
    with pytest.raises(ConfigError, match="model.arch=paa does not fit a ATSSModelConfig"):
        ATSSModelConfig(arch=Arch.paa)
    assert isinstance(model_config("iounet"), IoUNetModelConfig)
    assert with_arch(with_arch(IoUNetModelConfig(), Arch.faster_rcnn), Arch.iounet) == IoUNetModelConfig()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_yaml(name, tmp_path):
    cfg = get_preset(name)
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert config_from_yaml(str(path)) == cfg


def test_yaml_with_an_unknown_arch_or_key_is_a_config_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  arch: yolo\n")
    with pytest.raises(ConfigError, match="model.arch"):
        config_from_yaml(str(path))
    path.write_text("model:\n  arch: faster_rcnn\n  topk: 9\n")
    with pytest.raises(ConfigError, match="topk"):
        config_from_yaml(str(path))


def test_overrides_do_not_change_the_input_config():
    cfg = Config(model=PAAModelConfig())
    out = apply_overrides(cfg, ["model.topk=3"])
    assert out.model.topk == 3 and cfg.model.topk == 9


@pytest.mark.parametrize("override,message", [
    ("solver.base_lr=-0.01", "solver.base_lr=-0.01: must be > 0"),
    ("data.num_workers=-1", "data.num_workers=-1: must be >= 0"),
    ("solver.steps=[900,750]", "solver.steps=[900, 750]: must be increasing"),
    ("model.nms_thresh=2", "model.nms_thresh=2.0: must be in [0, 1]"),
    ("model.input.min_size_train=[300,200]", "model.input.min_size_train=[300, 200]"),
    ("model.anchor_sizes=[1,2]", "needs 5 sizes"),
    ("device=gpu", "device=gpu: must be auto, cpu, mps, cuda or cuda:N"),
    ("model.backbone.depth=19", "model.backbone.depth=19: must be one of"),
    ("solver.keep_last=0", "solver.keep_last=0: must be > 0"),
    ("test.ims_per_batch=0", "test.ims_per_batch=0: must be > 0"),
])
def test_values_out_of_range_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("atss_R_18_shapes", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_iounet_refuses_roi_align_and_every_preset_passes_the_rules():
    with pytest.raises(ConfigError, match="IoU-Net needs prroi"):
        load_config("iounet_R_18_shapes", ["model.rcnn.roi_pool=roi_align"])
    assert load_config("faster_rcnn_R_18_shapes", ["model.arch=iounet"]).model.rcnn.roi_pool.value == "prroi"
    for name in PRESETS:
        load_config(name)


def test_saved_yaml_with_a_bad_value_names_the_file_and_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("solver:\n  base_lr: -1\n")
    with pytest.raises(ConfigError, match=r"config.yaml: solver.base_lr=-1.0: must be > 0"):
        config_from_yaml(str(path))
