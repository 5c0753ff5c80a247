"""``assigndet benchmark``: the breakdown, FLOPs, memory and torchvision's figures in the JSON."""
import json

import pytest
import torch

from assigndet.cli import main
from assigndet.profile import StageClock

pytestmark = pytest.mark.usefixtures("one_thread")

#: a 64-pixel short side in both phases: seconds per preset
TINY = ["model.input.min_size_train=[64]", "model.input.max_size_train=96", "model.input.min_size_test=64",
        "model.input.max_size_test=96"]


def _run(preset, tmp_path, capsys):
    path = tmp_path / f"{preset}.json"
    assert main(["benchmark", preset, "--image-size", "60", "80", "--repeats", "1", "--device", "cpu",
                 "--json", str(path), *TINY]) == 0
    return json.loads(path.read_text()), capsys.readouterr().out


def _check_common(r, torchvision_model):
    assert r["image_size"] == [60, 80] and r["resized_size"] == [64, 85] and r["repeats"] == 1
    for name in ("assigndet", "torchvision"):
        for phase in ("inference", "train_step"):
            assert r[name][phase]["wall_s"] > 0 and r[name][phase]["cpu_s"] > 0
            assert r[name]["peak_memory_bytes"][phase] >= 0
        assert r[name]["flops"] > 0 and r[name]["params"] > 0
    assert r["torchvision"]["model"] == torchvision_model
    ours = r["assigndet"]
    for phase in ("inference", "train_step"):
        shares = [s["share"] for s in ours[phase]["stages"].values()]
        assert sum(shares) == pytest.approx(1.0)
    # the stages add up to the end-to-end time measured around them (within the hooks' overhead)
    total = sum(s["wall_s"] for s in ours["train_step"]["stages"].values())
    assert total == pytest.approx(ours["train_step"]["wall_s"], rel=0.2)


def test_benchmark_paa_shows_its_assignment_share(tmp_path, capsys):
    r, out = _run("paa_R_18_shapes", tmp_path, capsys)
    _check_common(r, "fcos_resnet50_fpn")
    train = r["assigndet"]["train_step"]["stages"]
    assert {"preprocess", "backbone+FPN", "head", "assignment", "losses", "backward"} <= set(train)
    assert train["assignment"]["wall_s"] > 0 and train["assignment"]["share"] > 0
    assert "assignment" not in r["assigndet"]["inference"]["stages"]
    assert {"backbone+FPN", "head", "post-processing"} <= set(r["assigndet"]["inference"]["stages"])
    assert "assignment" in out and "fcos_resnet50_fpn" in out


def test_benchmark_atss_dense_breakdown(tmp_path, capsys):
    r, _ = _run("atss_R_18_shapes", tmp_path, capsys)
    _check_common(r, "fcos_resnet50_fpn")
    assert r["assigndet"]["train_step"]["stages"]["assignment"]["wall_s"] > 0


def test_benchmark_faster_rcnn_two_stage_breakdown(tmp_path, capsys):
    r, out = _run("faster_rcnn_R_18_shapes", tmp_path, capsys)
    _check_common(r, "fasterrcnn_resnet50_fpn")
    inf = r["assigndet"]["inference"]["stages"]
    assert {"backbone+FPN", "RPN", "RoI heads", "post-processing"} <= set(inf)
    assert "head" not in inf and "RPN" in out


def test_stage_clock_times_nested_stages_exclusively():
    import time

    clock = StageClock(torch.device("cpu"))
    with clock("outer"):
        time.sleep(0.02)
        with clock("inner"):
            time.sleep(0.03)
    assert clock.wall["inner"] == pytest.approx(0.03, abs=0.015)
    assert clock.wall["outer"] == pytest.approx(0.02, abs=0.015)
