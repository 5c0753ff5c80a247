"""The run directory (assigndet.runs through engine.train, with the stand-in detector): a fresh
run refuses a directory holding one, --overwrite deletes only the run's files, --resume refuses
other settings and records accepted ones, falls back to the previous checkpoint, keep_last,
stale temporary files, file permissions."""
from __future__ import annotations

import json
import os
import stat

import pytest
import yaml

from assigndet import runs
from assigndet.config import replace
from assigndet.engine import train
from assigndet.errors import CheckpointError, ConfigError
from test_engine import TinyDetector, loss_table, make_shapes, read_metrics, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("runs_shapes"))


def _train(cfg, out, **kw):
    kw.setdefault("evaluate_at_end", False)
    return train(cfg, out, build_model_fn=kw.pop("model", TinyDetector), progress=False, **kw)


def _with(cfg, **solver):
    return replace(cfg, solver=replace(cfg.solver, **solver))


def test_fresh_train_refuses_a_directory_holding_a_run_and_leaves_it_untouched(shapes, tmp_path):
    out = tmp_path / "run"
    _train(tiny_config(shapes, max_iter=2), out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ConfigError) as e:
        _train(tiny_config(shapes, max_iter=3), out)
    msg = str(e.value)
    assert "\n" not in msg and str(out) in msg and "--resume" in msg and "new --out" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_failed_start_leaves_no_run_behind(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Exception, match="annotation file not found"):
        _train(tiny_config(tmp_path / "nowhere"), out)
    assert not runs.holds_run(out)  # fixing the typo and running again just works


def test_overwrite_deletes_only_the_files_of_the_earlier_run(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    _train(tiny_config(shapes, max_iter=3, checkpoint_period=1, eval_period=1), out)
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    _train(tiny_config(shapes, max_iter=2), out, overwrite=True)
    assert "--overwrite: deleted the" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and (out / "mine").is_dir()
    assert [r["iteration"] for r in read_metrics(out)] == [0, 1]
    assert not (out / "eval_history.jsonl").exists() and not (out / "model_0000001.safetensors").exists()
    assert json.loads((out / "run.json").read_text())["resume_history"] == []
    with pytest.raises(ConfigError, match="exclude each other"):
        _train(tiny_config(shapes, max_iter=2), out, overwrite=True, resume=True)


def test_resume_refuses_another_setting_and_records_an_accepted_one(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_config(shapes, max_iter=4, checkpoint_period=2)
    _train(cfg, out, preset="tiny")
    with pytest.raises(ConfigError) as e:
        _train(_with(cfg, base_lr=0.5), out, resume=True)
    assert "solver.base_lr: 0.1 -> 0.5" in str(e.value) and "solver.max_iter" in str(e.value)
    with pytest.raises(ConfigError, match="data.root"):
        _train(replace(cfg, data=replace(cfg.data, root=str(tmp_path))), out, resume=True)
    capsys.readouterr()
    res = _train(_with(cfg, max_iter=6), out, resume=True)
    assert res.iteration == 6
    assert "resume: solver.max_iter changed from 4 to 6" in capsys.readouterr().err
    info = json.loads((out / "run.json").read_text())
    assert info["preset"] == "tiny"
    assert [(h["iteration"], h["changes"]) for h in info["resume_history"]] == [(4, {"solver.max_iter": [4, 6]})]
    assert yaml.safe_load((out / "config.yaml").read_text())["solver"]["max_iter"] == 6


def test_resume_falls_back_to_the_previous_checkpoint_when_the_last_is_unreadable(shapes, tmp_path, capsys):
    mk = lambda c: TinyDetector(c, dropout=0.3)  # noqa: E731  dropout: the RNG states must come back too
    ref, out = tmp_path / "ref", tmp_path / "cut"
    _train(tiny_config(shapes, max_iter=6, checkpoint_period=2), ref, model=mk)
    _train(tiny_config(shapes, max_iter=4, checkpoint_period=2), out, model=mk)
    final = out / "model_final.safetensors"
    final.write_bytes(final.read_bytes()[:100])  # truncated: a disk error, a bad copy
    capsys.readouterr()
    _train(tiny_config(shapes, max_iter=6, checkpoint_period=2), out, model=mk, resume=True)
    err = capsys.readouterr().err
    assert "model_final.safetensors is unreadable" in err and "falling back to model_0000002.safetensors" in err
    assert "resuming from model_0000002.safetensors at iteration 2" in err
    assert loss_table(out) == loss_table(ref)


def test_resume_with_no_readable_checkpoint_is_one_clear_error(shapes, tmp_path):
    out = tmp_path / "run"
    _train(tiny_config(shapes, max_iter=2), out)
    for p in out.glob("model_*.state.pt"):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint in .* to resume from"):
        _train(tiny_config(shapes, max_iter=3), out, resume=True)


def test_keep_last_keeps_the_newest_periodic_checkpoints_and_the_final_one(shapes, tmp_path):
    out = tmp_path / "run"
    _train(tiny_config(shapes, max_iter=6, checkpoint_period=1, keep_last=2), out)
    assert sorted(p.name for p in out.glob("model_*")) == [
        "model_0000004.safetensors", "model_0000004.state.pt", "model_0000005.safetensors", "model_0000005.state.pt",
        "model_final.safetensors", "model_final.state.pt"]


def test_stale_temporary_files_are_removed_on_the_next_start(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_config(shapes, max_iter=2)
    _train(cfg, out)
    (out / ".model_0000002.safetensors.0a1b2c3d.tmp").write_bytes(b"x" * 1000)
    (out / ".model_0000002.state.pt.0a1b2c3e.tmp").write_bytes(b"x")
    capsys.readouterr()
    _train(_with(cfg, max_iter=3), out, resume=True)
    assert "removed 2 temporary file(s)" in capsys.readouterr().err
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_output_files_get_the_permissions_of_the_umask(shapes, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        _train(tiny_config(shapes, max_iter=1), out)
    finally:
        os.umask(old)
    for name in ("config.yaml", "run.json", "last_checkpoint", "model_final.safetensors", "model_final.state.pt"):
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name


def test_one_list_defines_the_keys_that_may_change_on_resume():
    assert runs.RESUMABLE_KEYS == ("solver.max_iter", "solver.checkpoint_period", "solver.eval_period",
                                   "solver.log_period", "solver.keep_last", "data.num_workers", "test.num_workers",
                                   "device", "model.fast_path")
