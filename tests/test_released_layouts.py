"""Released-checkpoint loading: errors that name keys and levels, fine-tuning, the other layouts
(PAA_minimal, Dynamic ATSS, mmdetection) and ``assigndet convert`` (SPEC §7)."""
from __future__ import annotations

import logging
import math

import pytest
import torch

import assigndet
from assigndet.checkpoints import CheckpointError, load_weights
from assigndet.cli import main
from test_released import original_state, save_original


@pytest.fixture(scope="module")
def atss_ckpt(tmp_path_factory):
    state = original_state("centerness", seed=1)
    path = tmp_path_factory.mktemp("atss") / "atss_R_50_FPN_1x.pth"
    save_original(path, state, "module")
    return path, state


# ============================================================================ errors and options
def test_anchor_mismatch_names_the_level(tmp_path):
    state = original_state("centerness", seed=7)
    state["rpn.anchor_generator.cell_anchors.2"] = torch.tensor([[-112.0, -112.0, 144.0, 144.0]])
    p = tmp_path / "bad_anchors.pth"
    save_original(p, state)
    with pytest.raises(CheckpointError, match=r"level 2 \(P5.*cell_anchors\.2"):
        assigndet.build_detector("atss_R_50_FPN_1x", weights=str(p))


def test_other_method_layout_names_the_keys(atss_ckpt):
    path, _ = atss_ckpt
    with pytest.raises(CheckpointError) as e:  # an ATSS checkpoint into PAA: centerness is not iou_pred
        assigndet.build_detector("paa_R_50_FPN_1x", weights=str(path))
    assert "rpn.head.centerness.weight" in str(e.value) and "head.quality.weight" in str(e.value)
    with pytest.raises(CheckpointError, match="mmdetection|_mmdet"):
        assigndet.build_detector("atss_R_50_FPN_1x_mmdet", weights=str(path))


def test_class_count_mismatch_and_finetuning(atss_ckpt, caplog):
    path, state = atss_ckpt
    with pytest.raises(CheckpointError) as e:
        assigndet.build_detector("atss_R_50_FPN_1x", weights=str(path), overrides=["model.num_classes=7"])
    msg = str(e.value)
    assert "head.cls_logits.weight" in msg and "80 classes" in msg and "reinit_classifier" in msg
    with caplog.at_level(logging.INFO, logger="assigndet"):
        m = assigndet.build_detector("atss_R_50_FPN_1x", weights=str(path),
                                     overrides=["model.num_classes=7", "model.reinit_classifier=true"])
    assert "reinitialised the classifier" in caplog.text
    assert m.head.cls_logits.weight.shape[0] == 7
    assert torch.equal(m.head.bbox_pred.weight, state["rpn.head.bbox_pred.weight"])
    assert m.head.cls_logits.bias[0].item() == pytest.approx(-math.log(99), abs=1e-4)  # fresh prior


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    state = original_state("centerness", seed=8)
    del state["backbone.fpn.fpn_layer3.bias"]
    state["rpn.head.extra_conv.weight"] = torch.zeros(1)
    state["backbone.body.layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    p = tmp_path / "broken.pth"
    save_original(p, state)
    with pytest.raises(CheckpointError) as e:
        assigndet.build_detector("atss_R_50_FPN_1x", weights=str(p))
    msg = str(e.value)
    assert "missing keys (1): fpn.fpn.layer_blocks.1.0.bias" in msg
    assert "unexpected keys (1): rpn.head.extra_conv.weight" in msg
    assert "body.layer1.0.conv1.weight (file [64, 64, 3, 3] vs model [64, 64, 1, 1])" in msg


class Arbitrary:
    """A pickled object that ``torch.load(weights_only=True)`` must refuse."""


def test_pickled_objects_are_refused(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "cfg": Arbitrary()}, p)
    with pytest.raises(CheckpointError, match="weights_only"):
        assigndet.build_detector("atss_R_50_FPN_1x", weights=str(p))


def test_paa_minimal_and_dynamic_atss_layouts(tmp_path):
    state = original_state("iou_pred", seed=9)
    minimal = {("head." + k[len("rpn.head."):] if k.startswith("rpn.head.") else k): v
               for k, v in state.items() if "anchor_generator" not in k}
    p = tmp_path / "paa_minimal.pth"
    torch.save(minimal, p)  # a bare state dict, head under head.*, no anchors
    m = assigndet.build_detector("paa_minimal_res50_1x", weights=str(p))
    assert torch.equal(m.head.quality.weight, state["rpn.head.iou_pred.weight"])
    state = original_state("centerness", seed=10)
    p = tmp_path / "dyn.pth"
    save_original(p, state)
    m = assigndet.build_detector("dynamic_atss_R_50_FPN_1x", weights=str(p))
    assert torch.equal(m.head.quality.bias, state["rpn.head.centerness.bias"])


def test_convert_cli(atss_ckpt, tmp_path, capsys):
    path, state = atss_ckpt
    out = tmp_path / "atss.safetensors"
    assert main(["convert", str(path), str(out), "--preset", "atss_R_50_FPN_1x"]) == 0
    assert "maskrcnn_benchmark layout" in capsys.readouterr().out
    m = assigndet.build_detector("atss_R_50_FPN_1x", weights=str(out))
    assert torch.equal(m.head.quality.weight, state["rpn.head.centerness.weight"])
    load_weights(m, out)  # plain safetensors round trip
    assert main(["convert", str(path), str(tmp_path / "x.safetensors"), "--preset", "paa_R_50_FPN_1x"]) == 2
    assert "rpn.head.centerness.weight" in capsys.readouterr().err


def test_finetuning_builder_for_training(tmp_path, tiny_overrides, caplog):
    """``pretrained_builder`` is a ``build_model_fn`` for ``engine.train``: weights of another class
    count load with a fresh classifier (safetensors too), and are refused without the flag."""
    from assigndet.checkpoints import save_weights
    from assigndet.presets import load_config
    from assigndet.detectors import build_model
    from assigndet.engine import pretrained_builder

    torch.manual_seed(0)
    src = build_model(load_config("atss_R_18_shapes", tiny_overrides).model)  # 3 classes
    path = save_weights(src, tmp_path / "tiny.safetensors")
    cfg = load_config("atss_R_18_shapes", tiny_overrides + ["model.num_classes=5"])
    with pytest.raises(CheckpointError, match="3 classes.*reinit_classifier"):
        pretrained_builder(path)(cfg.model)
    cfg.model.reinit_classifier = True
    with caplog.at_level(logging.INFO, logger="assigndet"):
        m = pretrained_builder(path)(cfg.model)
    assert "reinitialised the classifier" in caplog.text and m.head.cls_logits.weight.shape[0] == 5
    assert torch.equal(m.head.bbox_pred.weight, src.head.bbox_pred.weight)
    assert torch.equal(m.body.conv1.weight, src.body.conv1.weight)
