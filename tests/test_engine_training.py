"""End to end with the real detector: SIGTERM a ``python -m assigndet train`` process, resume,
and get exactly the losses of an uninterrupted run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_engine import loss_table, read_metrics
from conftest import subprocess_env

MAX_ITER = 60
TINY = ["model.backbone.depth=18", "model.backbone.base_width=8", "model.fpn_channels=16", "model.head_convs=1",
        "model.input.min_size_train=[96]", "model.input.max_size_train=160", "model.input.min_size_test=96",
        "model.input.max_size_test=160", "solver.ims_per_batch=2", "solver.log_period=1",
        "solver.checkpoint_period=1000", "data.num_workers=0", "test.num_workers=0", "test.ims_per_batch=2",
        "test.max_images=2", "device=cpu"]


def _env() -> dict:
    return subprocess_env()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from assigndet.data import generate_shapes

    root = tmp_path_factory.mktemp("shapes_real")
    generate_shapes(root, num_train=8, num_val=2, seed=0, min_side=64, max_side=96)
    return root


def _cmd(shapes: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "assigndet", "train", "atss_R_18_shapes", "--out", str(out), "--no-progress",
            f"data.root={shapes}", *TINY, f"solver.max_iter={MAX_ITER}", *extra]


def test_sigterm_resume_equals_uninterrupted_run(shapes, tmp_path):
    ref = subprocess.run(_cmd(shapes, tmp_path / "ref"), env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "cut"
    proc = subprocess.Popen(_cmd(shapes, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped at iteration" in stderr and "Traceback" not in stderr
    name = (out / "last_checkpoint").read_text().strip()
    stopped = int(name.split("_")[1].split(".")[0])
    assert 3 <= stopped < MAX_ITER
    assert [r["iteration"] for r in read_metrics(out)] == list(range(stopped))

    res = subprocess.run(_cmd(shapes, out) + ["--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {name} at iteration {stopped}" in res.stderr
    assert loss_table(out) == loss_table(tmp_path / "ref")  # bit-identical losses and LRs
    a = json.loads((out / "eval.json").read_text())
    b = json.loads((tmp_path / "ref" / "eval.json").read_text())
    assert a["AP"] == b["AP"] and a["per_class"] == b["per_class"]
