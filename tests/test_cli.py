from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from assigndet.cli import DEMO_PRESET, main

TINY = ["model.backbone.depth=18", "model.backbone.base_width=8", "model.fpn_channels=16", "model.head_convs=1",
        "model.input.min_size_train=[96]", "model.input.max_size_train=160",
        # test size 160: with 1 image per batch, 96 px gives a 1x1 P7 and GroupNorm(16 groups of 1 channel) raises
        "model.input.min_size_test=160", "model.input.max_size_test=200", "solver.ims_per_batch=2", "solver.max_iter=2", "solver.log_period=1",
        "data.num_workers=0", "test.num_workers=0", "test.ims_per_batch=2", "device=cpu"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("assigndet: error: ")
    return err[0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_shapes")
    assert main(["data", "shapes", "--out", str(root), "--train", "6", "--val", "2", "--seed", "0",
                 "--min-side", "64", "--max-side", "96"]) == 0
    return root


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_run")
    assert main(["train", DEMO_PRESET, "--out", str(out), "--no-progress", f"data.root={shapes}", *TINY]) == 0
    return out


def test_presets_lists_published_ap(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "atss_R_50_FPN_1x" in out and "39.3" in out


def test_data_shapes_writes_coco(shapes):
    ann = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    assert len(ann["images"]) == 6 and (shapes / "val").is_dir()


def test_unknown_preset(capsys, tmp_path):
    assert main(["train", "atss_nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'atss_nope'" in _error_line(capsys)


def test_presets_show_prints_the_resolved_config_as_yaml(capsys):
    from omegaconf import OmegaConf

    from assigndet.config import config_to_yaml
    from assigndet.presets import get_preset

    assert main(["presets", "--show", "paa_R_50_FPN_1x"]) == 0
    out = capsys.readouterr().out
    assert out == config_to_yaml(get_preset("paa_R_50_FPN_1x"))
    shown = OmegaConf.create(out)
    assert shown.model.arch == "paa" and shown.model.paa_variant == "original" and shown.solver.max_iter == 90000


def test_presets_show_unknown_name_is_a_one_line_error(capsys):
    assert main(["presets", "--show", "atss_nope"]) == 2
    assert "unknown preset 'atss_nope'" in _error_line(capsys)


def test_unknown_key_and_bad_value(capsys, tmp_path):
    assert main(["train", DEMO_PRESET, "--out", str(tmp_path), "solver.nope=1"]) == 2
    assert "Key 'nope' not in 'SolverConfig'" in _error_line(capsys)
    assert main(["train", DEMO_PRESET, "solver.max_iter=many", "--out", str(tmp_path)]) == 2
    assert "solver.max_iter=many" in _error_line(capsys)


def test_batch_not_divisible_by_the_processes(capsys, tmp_path, shapes, monkeypatch):
    """A real dataset and settings, two processes (the world size torchrun would give): the only
    error left is the total batch of 3."""
    import assigndet.engine

    monkeypatch.setattr(assigndet.engine, "get_world_size", lambda: 2)
    assert main(["train", DEMO_PRESET, "--out", str(tmp_path), f"data.root={shapes}", *TINY,
                 "solver.ims_per_batch=3", "solver.max_iter=1"]) == 2
    line = _error_line(capsys)
    assert "solver.ims_per_batch=3" in line and "not divisible by the 2 processes" in line


def test_missing_dataset_path(capsys, tmp_path):
    assert main(["train", DEMO_PRESET, "--out", str(tmp_path / "o"), f"data.root={tmp_path / 'nowhere'}",
                 "device=cpu"]) == 2
    line = _error_line(capsys)
    assert "annotation file not found" in line and "nowhere" in line


def test_debug_shows_traceback(capsys, tmp_path):
    assert main(["--debug", "train", "atss_nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "assigndet: error: unknown preset" in err


def test_missing_weights_and_images(capsys, tmp_path, trained):
    assert main(["eval", DEMO_PRESET, "--weights", str(tmp_path / "w.safetensors")]) == 2
    assert "weights file not found" in _error_line(capsys)
    w = str(trained / "model_final.safetensors")
    assert main(["predict", "--weights", w, str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "p")]) == 2
    assert "image not found" in _error_line(capsys)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["predict", "--weights", w, str(bad), "--out", str(tmp_path / "p")]) == 2
    assert "cannot read image" in _error_line(capsys)


def test_python_m_subprocess_error_is_one_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "assigndet", "train", "nope", "--out", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().startswith("assigndet: error: unknown preset")
    assert "Traceback" not in p.stderr
    script = Path(sys.executable).parent / "assigndet"
    if script.exists():  # the console script declared in pyproject
        p = subprocess.run([str(script), "presets"], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "atss_R_50_FPN_1x" in p.stdout


def test_train_eval_predict(trained, shapes, tmp_path, capsys):
    for f in ("config.yaml", "eval.json", "model_final.safetensors", "metrics.jsonl", "last_checkpoint"):
        assert (trained / f).exists(), f
    ev = json.loads((trained / "eval.json").read_text())
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP60", "AP70", "AP80", "AP90", "AR", "per_class"):
        assert k in ev
    capsys.readouterr()

    # eval of the saved weights reproduces the end-of-training numbers
    out = tmp_path / "ev"
    assert main(["eval", DEMO_PRESET, "--weights", str(trained / "model_final.safetensors"), "--out", str(out),
                 f"data.root={shapes}", *TINY]) == 0
    assert json.loads((out / "eval.json").read_text())["AP"] == ev["AP"]
    shown = capsys.readouterr()
    assert "AP" in shown.out and "eval:" in shown.err  # the progress bar, on stderr
    assert main(["eval", DEMO_PRESET, "--weights", str(trained / "model_final.safetensors"), "--no-progress",
                 f"data.root={shapes}", *TINY]) == 0
    assert "eval:" not in capsys.readouterr().err

    # predict: config.yaml beside the weights, a directory of images, class names drawn
    pred = tmp_path / "pred"
    assert main(["predict", "--weights", str(trained / "model_final.safetensors"), str(shapes / "val"),
                 "--out", str(pred), "--score-thresh", "0.0"]) == 0
    recs = json.loads((pred / "predictions.json").read_text())["images"]
    assert len(recs) == 2 and all((pred / r["output"]).is_file() for r in recs)
    names = {"circle", "rectangle", "triangle", "star", "cross", "ring", "diamond"}
    assert all(d["class_name"] in names for r in recs for d in r["detections"])

    # without config.yaml beside the weights: the config stored in the weights file
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(trained / "model_final.safetensors", lone / "w.safetensors")
    img = str(next((shapes / "val").iterdir()))
    assert main(["predict", "--weights", str(lone / "w.safetensors"), img, "--out", str(pred)]) == 0
    # weights without a stored config (e.g. converted elsewhere): --preset (+ overrides) is needed
    from assigndet.checkpoints import read_weights, save_weights

    state, _ = read_weights(lone / "w.safetensors")
    save_weights(state, lone / "bare.safetensors")
    bare = str(lone / "bare.safetensors")
    assert main(["predict", "--weights", bare, img, "--out", str(pred)]) == 2
    assert "no config.yaml beside" in _error_line(capsys)
    assert main(["predict", "--weights", bare, "--preset", DEMO_PRESET, img, *TINY, "--out", str(tmp_path / "p2")]) == 0
    # the preset's full-size model does not fit the tiny weights: the error names the keys
    assert main(["predict", "--weights", bare, "--preset", DEMO_PRESET, img, "--out", str(tmp_path / "p3")]) == 2
    assert "does not match the model" in _error_line(capsys)


def test_demo(tmp_path, capsys):
    out, data = tmp_path / "demo", tmp_path / "data"
    assert main(["demo", "--out", str(out), "--data", str(data), "--train", "4", "--val", "2", "--num-images", "2",
                 "--no-progress", *TINY]) == 0
    stdout = capsys.readouterr().out
    assert "demo finished: AP" in stdout
    assert (out / "eval.json").is_file() and (out / "loss_curve.png").stat().st_size > 1000
    assert len(list((out / "predictions").glob("*.png"))) == 2
