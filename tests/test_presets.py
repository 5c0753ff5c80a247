"""The published-model presets (SPEC §9, §3.5, §3.7, §6): names, numbers, schedules, backbones."""
from __future__ import annotations

import pytest
import torch

from assigndet import presets
from assigndet.cli import main
from assigndet.config import with_arch
from assigndet.presets import PRESETS, PUBLISHED_AP, get_preset, load_config
from assigndet.variants import Arch

ATSS_NAMES = {
    "atss_R_50_FPN_1x": 39.3, "atss_dcnv2_R_50_FPN_1x": 43.2, "atss_R_101_FPN_2x": 43.5,
    "atss_dcnv2_R_101_FPN_2x": 46.1, "atss_X_101_32x8d_FPN_2x": 44.8, "atss_dcnv2_X_101_32x8d_FPN_2x": 47.7,
    "atss_X_101_64x4d_FPN_2x": 45.5, "atss_dcnv2_X_101_64x4d_FPN_2x": 47.7,
}
PAA_NAMES = {
    "paa_R_50_FPN_1x": 40.4, "paa_R_50_FPN_1.5x": 41.1, "paa_R_101_FPN_2x": 44.6, "paa_dcnv2_R_101_FPN_2x": 47.1,
    "paa_X_101_64x4d_FPN_2x": 46.4, "paa_dcnv2_X_101_64x4d_FPN_2x": 48.8, "paa_dcnv2_X_101_32x8d_FPN_2x": 48.9,
    "paa_dcnv2_X_152_32x8d_FPN_2x": 50.5,
}
MS_TEST = {"atss_dcnv2_X_101_64x4d_FPN_2x_ms_test": 50.7, "paa_dcnv2_X_101_64x4d_FPN_2x_ms_test": 51.3,
           "paa_dcnv2_X_101_32x8d_FPN_2x_ms_test": 51.2, "paa_dcnv2_X_152_32x8d_FPN_2x_ms_test": 53.0}


def test_every_published_row_is_a_preset_with_its_ap():
    for name, ap in {**ATSS_NAMES, **PAA_NAMES, **MS_TEST}.items():
        assert name in PRESETS, name
        assert PUBLISHED_AP[name] == ap, name
    for name in ATSS_NAMES:
        dyn = "dynamic_" + name
        assert dyn in PRESETS and PUBLISHED_AP[dyn] is None
        a, d = get_preset(name), get_preset(dyn)
        assert d.model.arch is Arch.dynamic_atss
        d.model = with_arch(d.model, Arch.atss)
        assert a == d  # Dynamic ATSS reuses the ATSS configs unchanged
    assert "dynamic_atss_dcnv2_X_101_64x4d_FPN_2x_ms_test" in PRESETS
    assert PUBLISHED_AP["paa_minimal_res50_1x"] == 40.2 and PUBLISHED_AP["paa_minimal_res101_2x"] == 44.2
    assert len(presets.zoo_names()) == len(set(presets.zoo_names())) == 9 + 11 + 9 + 2 + 9


def test_presets_command_prints_ap_and_notes(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in list(ATSS_NAMES) + list(PAA_NAMES) + list(MS_TEST) + ["paa_minimal_res50_1x", "paa_R_50_FPN_1x_mmdet"]:
        line = next(line for line in out.splitlines() if line.split()[0] == name)
        assert str(PUBLISHED_AP[name]) in line, line
    assert "test-dev, multi-scale test" in out


def test_each_preset_is_one_table_row_with_a_fresh_config():
    """One explicit table: every name once, each call a new Config (no shared mutable state)."""
    names = [r.name for r in presets.ROWS] + list(presets._NAMED)
    assert len(names) == len(set(names)) == len(PRESETS)
    a, b = get_preset("paa_R_50_FPN_1x"), get_preset("paa_R_50_FPN_1x")
    a.model.backbone.depth = 18
    assert b.model.backbone.depth == 50 and get_preset("paa_R_50_FPN_1x").model.backbone.depth == 50


def test_zoo_module_is_a_deprecated_alias_of_presets():
    import importlib
    import sys

    sys.modules.pop("assigndet.zoo", None)
    with pytest.warns(DeprecationWarning, match="assigndet.presets"):
        zoo = importlib.import_module("assigndet.zoo")
    assert zoo.build_row is presets.build_row and zoo.ROWS is presets.ROWS


@pytest.mark.parametrize("name,depth,groups,width,style,dcn", [
    ("atss_R_50_FPN_1x", 50, 1, 64, "caffe2", [False] * 4),
    ("atss_dcnv2_R_50_FPN_1x", 50, 1, 64, "caffe2", [False, True, True, True]),
    ("paa_dcnv2_R_101_FPN_2x", 101, 1, 64, "caffe2", [False, True, True, True]),
    ("atss_X_101_32x8d_FPN_2x", 101, 32, 8, "pytorch", [False] * 4),
    ("paa_dcnv2_X_101_64x4d_FPN_2x", 101, 64, 4, "pytorch", [False, False, True, True]),
    ("paa_dcnv2_X_152_32x8d_FPN_2x", 152, 32, 8, "pytorch", [False, False, True, True]),
])
def test_backbones(name, depth, groups, width, style, dcn):
    b = get_preset(name).model.backbone
    assert (b.depth, b.groups, b.width_per_group, b.style, b.stage_with_dcn) == (depth, groups, width, style, dcn)
    assert b.norm == "frozen_bn" and b.frozen_bn_eps == 0.0 and b.freeze_at == 2
    assert get_preset(name).model.head_dcn == any(dcn)


def test_schedules_and_multiscale_training():
    c = get_preset("atss_R_50_FPN_1x")
    assert (c.solver.max_iter, c.solver.steps, c.model.input.min_size_train) == (90000, [60000, 80000], [800])
    c = get_preset("paa_R_50_FPN_1.5x")
    assert (c.solver.max_iter, c.solver.steps, c.model.input.min_size_train) == (135000, [90000, 120000], [800])
    for name in ("atss_R_101_FPN_2x", "paa_dcnv2_X_101_32x8d_FPN_2x", "dynamic_atss_X_101_64x4d_FPN_2x"):
        c = get_preset(name)
        assert (c.solver.max_iter, c.solver.steps) == (180000, [120000, 160000])
        assert c.model.input.min_size_train == [640, 800] and c.model.input.min_size_test == 800
    c = get_preset("paa_dcnv2_X_152_32x8d_FPN_2x")
    i = c.model.input
    assert (i.min_size_train, i.max_size_train, i.min_size_test, i.max_size_test) == ([640, 864], 1440, 864, 1440)
    assert (c.solver.ims_per_batch, c.solver.max_iter, c.solver.steps) == (8, 360000, [240000, 320000])
    from assigndet.engine import scaled_lr

    assert scaled_lr(c.solver) == pytest.approx(0.005)
    for name in PAA_NAMES:
        m = get_preset(name).model
        assert m.score_voting and m.reg_loss_weight == 1.3 and m.quality_loss_weight == 0.5


def test_ms_test_rows_switch_tta_on():
    for name in MS_TEST:
        c = get_preset(name)
        t = c.model.tta
        assert t.enabled and t.vote and t.merge == "soft-vote" and t.vote_thresh == 0.66 and t.detections_per_img == 1000
        assert t.scales == [400, 500, 600, 640, 700, 900, 1000, 1100, 1200, 1300, 1400, 1800] and t.max_size == 3000
        assert t.scale_ranges[0] == [96, 10000] and t.scale_ranges[-1] == [0, 96]
        base = get_preset(name[: -len("_ms_test")])
        assert not base.model.tta.enabled
        base.model.tta.enabled = True
        assert base == c  # the same model, one key apart
    assert load_config("atss_R_50_FPN_1x", ["model.tta.enabled=true"]).model.tta.enabled


def test_paa_minimal_presets():
    c = get_preset("paa_minimal_res50_1x")
    from assigndet.engine import scaled_lr

    assert c.solver.ims_per_batch == 12 and scaled_lr(c.solver) == pytest.approx(0.0075)
    assert (c.solver.max_iter, c.solver.steps) == (120000, [80000, 106666])
    m = c.model
    assert (m.paa_variant, m.loss_normalizer, m.input.resize_rule, m.score_voting) == ("minimal", "local", "minimal",
                                                                                       False)
    c = get_preset("paa_minimal_res101_2x")
    assert c.model.backbone.depth == 101 and c.model.input.min_size_train == [640, 800]
    assert (c.solver.ims_per_batch, c.solver.max_iter, c.solver.steps) == (10, 288000, [192000, 256000])


def test_resize_rules():
    from assigndet.nn.transform import resize_size

    # maskrcnn-benchmark: short side 800, long side truncated; capped long side -> rounded short side
    assert resize_size(480, 640, 800, 1333) == (800, 1066)
    assert resize_size(300, 1000, 800, 1333) == (400, 1333)
    assert resize_size(800, 1201, 800, 1333) == (800, 1201)
    # PAA_minimal: int(scale * side); mmdetection: rounded
    assert resize_size(480, 641, 800, 1333, "minimal") == (800, 1068)
    assert resize_size(480, 641, 800, 1333, "mmdet") == (800, 1068)
    assert resize_size(427, 640, 800, 1333, "minimal") == (800, 1199)
    assert resize_size(427, 640, 800, 1333, "mmdet") == (800, 1199)
    assert resize_size(333, 500, 800, 1333, "minimal") == (800, 1201)
    assert resize_size(333, 500, 800, 1333, "mrcnn") == (800, 1201)
    assert resize_size(375, 500, 800, 1333, "mmdet") == (800, 1067) and resize_size(375, 500, 800, 1333) == (800, 1066)
    with pytest.raises(ValueError, match="not a valid ResizeRule"):
        resize_size(1, 1, 1, 1, "bogus")


def test_paa_minimal_cut_rule(monkeypatch):
    """PAA_minimal's cut (SPEC §3.7): the fg-subset index of the max density, used as a position in
    the full sorted list; identical to the original when the fg samples form a prefix."""
    from types import SimpleNamespace

    import assigndet.assign.paa as paa

    comps = torch.tensor([[1, 0, 1, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1, 1]])
    dens = torch.tensor([[0.0, -1.0, 0.0, -0.5, -2.0, 0.0, 0.0, 0.0, 0.0], [-1.0, -0.2, -3.0, 0, 0, 0, 0, 0, 0]])
    monkeypatch.setattr(paa, "gmm_fit", lambda scores, valid: SimpleNamespace(components=comps, log_density=dens))
    scores = torch.arange(18.0)
    matched = torch.cat([torch.zeros(9), torch.ones(9)]).long()
    orig = paa.paa_partition_details(scores, matched, [18], 2, topk=9, variant="original")
    mini = paa.paa_partition_details(scores, matched, [18], 2, topk=9, variant="minimal")
    mmd = paa.paa_partition_details(scores, matched, [18], 2, topk=9, variant="mmdet")
    # GT 0: fg at positions 1, 3, 4; max fg density at position 3 = fg-subset index 1
    assert orig.cut.tolist() == [3, 1] and mini.cut.tolist() == [1, 1]
    assert orig.is_positive[0].tolist() == [True] * 4 + [False] * 5
    assert mini.is_positive[0].tolist() == [True] * 2 + [False] * 7
    assert mmd.is_positive[0].tolist() == [False, True, False, True] + [False] * 5
    # GT 1: fg is a prefix, all three rules agree
    assert orig.is_positive[1].tolist() == mini.is_positive[1].tolist() == mmd.is_positive[1].tolist()


def test_the_demo_preset_is_the_shapes_model_with_its_own_inputs_and_schedule():
    from dataclasses import asdict

    from assigndet.cli import DEMO_PRESET
    from assigndet.variants import Optimizer

    demo, base = get_preset(DEMO_PRESET), get_preset("atss_R_18_shapes")
    assert DEMO_PRESET == "atss_R_18_shapes_5min"
    a, b = asdict(demo.model), asdict(base.model)
    assert a.pop("input") != b.pop("input") and a == b  # the same network: weights move between the two
    assert demo.solver.optimizer is Optimizer.adamw and demo.solver.max_iter < base.solver.max_iter
    assert demo.model.input.max_size_train <= 320  # the shapes images are 160-320 px: no upscaling
