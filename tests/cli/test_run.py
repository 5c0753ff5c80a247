"""The command line of train / eval / predict as a new user meets it: a run directory is never
silently replaced or changed, weights of another detector are refused, predict over a folder
survives an unreadable file, and only rank 0 prints."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import assigndet.engine
from assigndet.checkpoints import save_weights
from assigndet.cli import DEMO_PRESET, main
from assigndet.config import config_to_yaml
from assigndet.detectors import build_model
from assigndet.presets import load_config
from test_engine import TinyDetector, make_shapes

BASE = ["solver.ims_per_batch=2", "data.num_workers=0", "test.num_workers=0", "test.ims_per_batch=2", "device=cpu",
        "solver.log_period=1"]
TINY_REAL = ["model.backbone.depth=18", "model.backbone.base_width=8", "model.fpn_channels=16", "model.head_convs=1",
             "model.input.min_size_test=160", "model.input.max_size_test=200", "device=cpu"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("cli_run_shapes"))


@pytest.fixture
def standin(monkeypatch):
    """The CLI trains the stand-in detector (milliseconds per step)."""
    monkeypatch.setattr(assigndet.engine, "default_build_model", TinyDetector)


def _error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("assigndet: error")]
    assert len(lines) == 1, lines
    return lines[0]


def _train(out, *extra):
    return main(["train", DEMO_PRESET, "--out", str(out), "--no-progress", *BASE, *extra])


def test_train_into_a_finished_run_is_refused_with_the_two_ways_on(shapes, tmp_path, standin, capsys):
    out = tmp_path / "run"
    assert _train(out, f"data.root={shapes}", "solver.max_iter=2") == 0
    final = (out / "model_final.safetensors").read_bytes()
    assert _train(out, f"data.root={shapes}", "solver.max_iter=2") == 2
    line = _error_line(capsys)
    assert str(out) in line and "--resume" in line and "new --out" in line
    assert (out / "model_final.safetensors").read_bytes() == final
    assert _train(out, f"data.root={shapes}", "solver.max_iter=3", "--overwrite") == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["solver"]["max_iter"] == 3


def test_resume_without_the_earlier_overrides_keeps_the_saved_run(shapes, tmp_path, standin, capsys):
    """The README's example once turned a short run into a preset-length one on another data.root."""
    out = tmp_path / "run"
    assert _train(out, f"data.root={shapes}", "solver.max_iter=4", "solver.checkpoint_period=2") == 0
    saved = (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", DEMO_PRESET, "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "training already complete (4/4 iterations)" in capsys.readouterr().err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["solver"]["max_iter"] == 4 and cfg["data"]["root"] == str(shapes) and cfg["data"]["num_workers"] == 0
    assert (out / "config.yaml").read_text() == saved
    # an allowed change is accepted, said and recorded
    assert main(["train", DEMO_PRESET, "--out", str(out), "--resume", "--no-progress", "solver.max_iter=6"]) == 0
    assert "resume: solver.max_iter changed from 4 to 6" in capsys.readouterr().err
    hist = json.loads((out / "run.json").read_text())["resume_history"]
    assert hist[-1]["changes"] == {"solver.max_iter": [4, 6]} and hist[-1]["iteration"] == 4
    assert [json.loads(ln)["iteration"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == list(range(6))


def test_resume_refuses_another_preset_or_setting_in_one_line(shapes, tmp_path, standin, capsys):
    out = tmp_path / "run"
    assert _train(out, f"data.root={shapes}", "solver.max_iter=2") == 0
    before = (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "paa_R_50_FPN_1x", "--out", str(out), "--resume"]) == 2
    assert f"holds a run of preset {DEMO_PRESET}, not paa_R_50_FPN_1x" in _error_line(capsys)
    (out / "run.json").unlink()  # a run without the record: the architecture still decides
    assert main(["train", "paa_R_50_FPN_1x", "--out", str(out), "--resume"]) == 2
    assert "holds a atss run; preset paa_R_50_FPN_1x is paa" in _error_line(capsys)
    assert main(["train", DEMO_PRESET, "--out", str(out), "--resume", "solver.base_lr=0.5"]) == 2
    line = _error_line(capsys)
    assert "solver.base_lr" in line and "may change on --resume" in line
    assert main(["train", DEMO_PRESET, "--out", str(out), "--resume", f"data.root={tmp_path}"]) == 2
    assert "data.root" in _error_line(capsys)
    assert (out / "config.yaml").read_text() == before


# ------------------------------------------------------------------------------ weights
@pytest.fixture(scope="module")
def atss_weights(tmp_path_factory):
    """A tiny ATSS model (7 classes) saved the way train saves it, config.yaml beside it."""
    d = tmp_path_factory.mktemp("weights")
    cfg = load_config(DEMO_PRESET, TINY_REAL)
    torch.manual_seed(0)
    w = save_weights(build_model(cfg.model), d / "model_final.safetensors", metadata={"config": config_to_yaml(cfg)})
    (d / "config.yaml").write_text(config_to_yaml(cfg))
    return w


def test_eval_refuses_weights_of_another_architecture_or_class_count(atss_weights, shapes, capsys):
    assert main(["eval", "dynamic_atss_R_18_shapes", "--weights", str(atss_weights), f"data.root={shapes}",
                 *TINY_REAL]) == 2
    line = _error_line(capsys)
    assert str(atss_weights) in line and "model.arch=atss with 7 classes" in line and "model.arch=dynamic_atss" in line
    assert main(["eval", DEMO_PRESET, "--weights", str(atss_weights), f"data.root={shapes}", *TINY_REAL,
                 "model.num_classes=3"]) == 2
    assert "atss with 7 classes but the preset/config builds model.arch=atss with 3 classes" in _error_line(capsys)


def test_predict_over_a_folder_skips_an_unreadable_file_and_writes_the_rest(atss_weights, shapes, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((shapes / "val").iterdir())[:2]:
        (images / src.name).write_bytes(src.read_bytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(atss_weights), str(images), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: skipped" in err and "broken.jpg" in err and "1 of 3 images skipped" in err
    doc = json.loads((out / "predictions.json").read_text())
    assert len(doc["images"]) == 2 and all((out / r["output"]).is_file() for r in doc["images"])
    assert [s["file"] for s in doc["skipped"]] == [str(images / "broken.jpg")]
    assert "cannot read image" in doc["skipped"][0]["error"]


def test_predict_with_no_readable_image_is_one_line_and_exit_2(atss_weights, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(atss_weights), str(bad), "--out", str(out)]) == 2
    assert "cannot read image" in _error_line(capsys)
    assert json.loads((out / "predictions.json").read_text())["images"] == []


# ------------------------------------------------------------------------------- rank 0
def test_only_rank_0_prints_the_ap_line(shapes, tmp_path, standin, capsys, monkeypatch):
    """A rank-1 process: its rank is known until the process group is destroyed (after which
    every process looked like rank 0 and printed the AP line)."""
    import assigndet.utils as U

    state = {"rank": 1}
    monkeypatch.setattr(U, "is_main_process", lambda: state["rank"] == 0)
    monkeypatch.setattr(assigndet.engine, "destroy_distributed", lambda: state.update(rank=0))
    assert _train(tmp_path / "run", f"data.root={shapes}", "solver.max_iter=1") == 0
    captured = capsys.readouterr()
    assert not [ln for ln in captured.out.splitlines() if ln.startswith("AP ")]
    assert "assigndet:" not in captured.err  # the status lines too
    state["rank"] = 0
    assert _train(tmp_path / "run0", f"data.root={shapes}", "solver.max_iter=1") == 0
    assert [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("AP ")]
