"""Faults during training: an emergency checkpoint on a failure after the first iteration, a full
disk as one line that never damages the last good checkpoint, kill -9 at random moments during
saves then --resume (identical losses), and two identical runs of the real detector."""
from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import assigndet.utils as U
from assigndet.checkpoints import CheckpointError, load_training_state, load_weights, save_checkpoint
from assigndet.cli import DEMO_PRESET, main
from assigndet.data import CocoDetection
from assigndet.engine import train
from assigndet.errors import DatasetError
from test_engine import TinyDetector, loss_table, make_shapes, read_metrics, tiny_config

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("fault_shapes"))


def _train(cfg, out, model=TinyDetector, **kw):
    return train(cfg, out, build_model_fn=model, progress=False, evaluate_at_end=False, **kw)


def _dropout(c):
    return TinyDetector(c, dropout=0.3)  # the RNG states must come back on resume


# ------------------------------------------------------------------------- emergency checkpoint
def test_a_data_error_saves_an_emergency_checkpoint_and_resume_equals_an_uninterrupted_run(
        shapes, tmp_path, monkeypatch, capsys):
    cfg = tiny_config(shapes, max_iter=6, checkpoint_period=100)
    _train(cfg, tmp_path / "ref", model=_dropout)
    real, calls = CocoDetection.__getitem__, {"n": 0}

    def broken(self, index):  # the 7th image read (iteration 3) is corrupt
        calls["n"] += 1
        if calls["n"] == 7:
            raise DatasetError("cannot read image 0007.jpg (image id 7): truncated file")
        return real(self, index)

    monkeypatch.setattr(CocoDetection, "__getitem__", broken)
    out = tmp_path / "cut"
    with pytest.raises(DatasetError, match="truncated"):
        _train(cfg, out, model=_dropout)
    err = capsys.readouterr().err
    assert "training failed at iteration 3: saved model_emergency_0000003" in err and "--resume" in err
    assert (out / "last_checkpoint").read_text().strip() == "model_emergency_0000003.safetensors"
    monkeypatch.setattr(CocoDetection, "__getitem__", real)  # the image is fixed
    _train(cfg, out, model=_dropout, resume=True)
    assert "resuming from model_emergency_0000003.safetensors at iteration 3" in capsys.readouterr().err
    assert loss_table(out) == loss_table(tmp_path / "ref")


def test_a_failure_in_the_first_iteration_saves_nothing(shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(CocoDetection, "__getitem__", lambda self, i: (_ for _ in ()).throw(DatasetError("bad")))
    with pytest.raises(DatasetError):
        _train(tiny_config(shapes), tmp_path / "run")
    assert not list((tmp_path / "run").glob("model_*"))


# ---------------------------------------------------------------------------------- full disk
def _fill_disk_from(monkeypatch, when):
    """os.fsync of the atomic writes raises ENOSPC once ``when()`` is true (a full disk)."""
    real = U.os.fsync

    def fsync(fd):
        if when():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(U.os, "fsync", fsync)


def test_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    m = torch.nn.Linear(3, 2)
    first = save_checkpoint(tmp_path, "model_0000001", model=m, state={"iteration": 1})
    _fill_disk_from(monkeypatch, lambda: True)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path, "model_0000002", model=m, state={"iteration": 2})
    msg = str(e.value)
    assert "\n" not in msg and f"no space left on the device of {tmp_path}" in msg
    assert "bytes needed" in msg and "free)" in msg and "last_checkpoint still names model_0000001" in msg
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text().strip() == first.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.safetensors",
                                                          "model_0000001.state.pt"]  # no partial or tmp file
    load_weights(torch.nn.Linear(3, 2), first)
    assert load_training_state(tmp_path / "model_0000001.state.pt")["iteration"] == 1


def test_full_disk_during_training_is_one_cli_line_and_resume_continues(shapes, tmp_path, monkeypatch, capsys):
    import assigndet.engine

    monkeypatch.setattr(assigndet.engine, "default_build_model", TinyDetector)
    out = tmp_path / "run"
    args = ["train", DEMO_PRESET, "--out", str(out), "--no-progress", f"data.root={shapes}", "solver.max_iter=6",
            "solver.ims_per_batch=2", "solver.checkpoint_period=2", "data.num_workers=0", "test.num_workers=0",
            "device=cpu"]
    pointer, real_fsync = out / "last_checkpoint", os.fsync
    _fill_disk_from(monkeypatch, lambda: pointer.is_file() and "0000002" in pointer.read_text())
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("assigndet: error")]
    assert len(err) == 1 and "no space left on the device" in err[0] and "model_0000004" in err[0]
    assert (out / "last_checkpoint").read_text().strip() == "model_0000002.safetensors"
    assert not list(out.glob(".*.tmp")) and not list(out.glob("model_0000004*"))
    monkeypatch.setattr(U.os, "fsync", real_fsync)  # space freed
    assert main(args[:4] + ["--resume", "--no-progress"]) == 0
    assert "resuming from model_0000002.safetensors at iteration 2" in capsys.readouterr().err


# ------------------------------------------------------------------------- kill -9 during saves
_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_engine import TinyDetector, tiny_config
from assigndet.engine import train
cfg = tiny_config(Path({shapes!r}), max_iter={max_iter}, checkpoint_period=1, keep_last=2)
res = train(cfg, sys.argv[1], resume=sys.argv[2] == "1", build_model_fn=lambda c: TinyDetector(c, dropout=0.3),
            progress=False, evaluate_at_end=False)
sys.exit(res.exit_code)
"""


def _kill_during_a_save(proc: subprocess.Popen, out: Path, rng: random.Random, deadline: float) -> bool:
    """SIGKILL ``proc`` while a temporary file of a save exists (after a random number of saves)."""
    skip = rng.randrange(0, 4)
    seen: set[str] = set()
    while time.time() < deadline and proc.poll() is None:
        tmp = [e.name for e in os.scandir(out) if e.name.endswith(".tmp")] if out.is_dir() else []
        if tmp and tmp[0] not in seen:
            seen.add(tmp[0])
            if len(seen) > skip:
                proc.kill()
                proc.wait()
                return True
    return False


def test_kill_9_at_random_moments_during_saves_then_resume_gives_the_uninterrupted_losses(shapes, tmp_path, capsys):
    max_iter = 12
    _train(tiny_config(shapes, max_iter=max_iter, checkpoint_period=1, keep_last=2), tmp_path / "ref", model=_dropout)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_SCRIPT.format(tests=str(TESTS), shapes=str(shapes), max_iter=max_iter)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out, rng, kills = tmp_path / "cut", random.Random(0), 0
    deadline = time.time() + 40
    for trial in range(2):  # a fresh start killed, then a resume killed
        proc = subprocess.Popen([sys.executable, str(script), str(out), str(int(trial > 0))], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kills += _kill_during_a_save(proc, out, rng, deadline)
        proc.wait()
    assert kills == 2
    capsys.readouterr()
    res = _train(tiny_config(shapes, max_iter=max_iter, checkpoint_period=1, keep_last=2), out, model=_dropout,
                 resume=True)
    assert res.iteration == max_iter and not list(out.glob(".*.tmp"))
    assert loss_table(out) == loss_table(tmp_path / "ref")


# ---------------------------------------------------------------------------------- reproducible
REAL_TINY = ["model.backbone.depth=18", "model.backbone.base_width=8", "model.fpn_channels=16", "model.head_convs=1",
             "model.input.min_size_train=[96,128]", "model.input.max_size_train=160",
             "model.input.min_size_test=160", "model.input.max_size_test=200", "solver.ims_per_batch=2",
             "solver.max_iter=3", "solver.log_period=1", "data.num_workers=0", "test.num_workers=0",
             "test.ims_per_batch=2", "test.max_images=2", "device=cpu", "seed=5"]


def test_two_runs_with_the_same_seed_and_threads_give_identical_losses_and_ap(shapes, tmp_path, capsys):
    """The real detector (multi-scale training, BatchNorm backbone, GroupNorm head), one thread."""
    for name in ("a", "b"):
        assert main(["train", DEMO_PRESET, "--out", str(tmp_path / name), "--no-progress", f"data.root={shapes}",
                     *REAL_TINY]) == 0
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "data_time")} for r in rows]  # noqa: E731
    assert len(a) == 3 and strip(a) == strip(b)
    ea, eb = (json.loads((tmp_path / n / "eval.json").read_text()) for n in ("a", "b"))
    assert ea["AP"] == eb["AP"] and ea["per_class"] == eb["per_class"]
