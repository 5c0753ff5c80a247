"""torchrun with 2 CPU processes (gloo) gives the losses of 1 process with the same total batch."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_engine import loss_table, make_shapes
from conftest import subprocess_env

TESTS = Path(__file__).resolve().parent  # tests/: test_engine.py (imported by the subprocess) lives here
# atss_R_18_shapes shrunk: BatchNorm in the backbone (the preset's norm), two training scales, 64-96 px images
TINY_BN_MULTISCALE = [
    "model.backbone.base_width=8", "model.fpn_channels=16", "model.head_convs=1",
    "model.input.min_size_train=[64,96]", "model.input.max_size_train=128", "model.input.min_size_test=64",
    "model.input.max_size_test=128", "solver.max_iter=4", "solver.ims_per_batch=4", "solver.log_period=1",
    "solver.checkpoint_period=100", "solver.warmup_iters=1", "data.num_workers=0", "test.num_workers=0",
    "test.max_images=2", "device=cpu"]


def _env() -> dict:
    return subprocess_env()


def _torchrun(args: list[str], nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def _run(cmd, timeout=120):
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _assert_close(a: dict, b: dict, rel=1e-5):
    assert a.keys() == b.keys()
    for it in a:
        for x, y in zip(a[it], b[it]):
            assert x == pytest.approx(y, rel=rel, abs=1e-6), (it, a[it], b[it])


@pytest.fixture(scope="module")
def varied_shapes(tmp_path_factory):
    from assigndet.data import generate_shapes

    root = tmp_path_factory.mktemp("varied")
    generate_shapes(root, num_train=8, num_val=2, seed=1, min_side=64, max_side=96)  # sizes differ: padding matters
    return root


def test_torchrun_two_processes_equal_one_process_standin(tmp_path):
    shapes = make_shapes(tmp_path / "shapes")
    script = tmp_path / "run_tiny.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from test_engine import TinyDetector, tiny_config
        from assigndet.engine import train, destroy_distributed
        from pathlib import Path
        cfg = tiny_config(Path({str(shapes)!r}), max_iter=5, batch=4)
        res = train(cfg, sys.argv[1], build_model_fn=TinyDetector, progress=False, evaluate_at_end=True)
        destroy_distributed()
        sys.exit(res.exit_code)
    """))
    _run([sys.executable, str(script), str(tmp_path / "one")])
    _run(_torchrun([str(script), str(tmp_path / "two")], 2))
    one, two = loss_table(tmp_path / "one"), loss_table(tmp_path / "two")
    assert len(one) == 5
    _assert_close(one, two)
    # evaluation gathered from both ranks covers every validation image once
    import json

    e1 = json.loads((tmp_path / "one" / "eval.json").read_text())
    e2 = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert e1["num_images"] == e2["num_images"] == 4
    assert e1["AP"] == pytest.approx(e2["AP"], abs=1e-6)


def _all_losses_equal(one: dict, two: dict, tol: float = 1e-4) -> None:
    """Every logged value (each loss, total, lr) of every iteration, within ``tol`` (abs + rel)."""
    assert one.keys() == two.keys()
    for it in one:
        assert len(one[it]) == len(two[it])
        for x, y in zip(one[it], two[it]):
            assert abs(x - y) <= tol * (1 + abs(x)), (it, one[it], two[it])


def test_torchrun_two_processes_equal_one_process_batchnorm_multiscale_preset(varied_shapes, tmp_path):
    """atss_R_18_shapes (BatchNorm, training scales drawn in [64, 96]): the sampler draws the scales
    from the seed and iteration, every process pads to the global batch's size and the BatchNorm
    statistics are all-reduced (solver.sync_bn, default), so 2 x 2 images = 1 x 4 images."""
    args = ["-m", "assigndet", "train", "atss_R_18_shapes", "--no-progress", f"data.root={varied_shapes}",
            *TINY_BN_MULTISCALE]
    _run([sys.executable, *args, "--out", str(tmp_path / "one")], timeout=180)
    two = _run(_torchrun([*args, "--out", str(tmp_path / "two")], 2), timeout=180)
    assert "BatchNorm layers synchronised across 2 processes" in two.stderr
    one, two = loss_table(tmp_path / "one"), loss_table(tmp_path / "two")
    assert sorted(one) == [0, 1, 2, 3]
    _all_losses_equal(one, two)
