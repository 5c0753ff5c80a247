"""Engine tests with a tiny stand-in detector (same contract as the real ones, milliseconds per step).

The stand-in and the helpers here are imported by test_engine_ddp.py, test_engine_training.py and by
the subprocess scripts.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assigndet import config as C
from assigndet.config import Config, ConfigError, DataConfig, ModelConfig, SolverConfig
from assigndet.engine import (WarmupMultiStepLR, build_optimizer, evaluate, inference, lr_factor, scaled_lr, train,
                              validate_solver)
from assigndet.variants import AMP, Optimizer, Warmup
from assigndet.presets import load_config

LOSS_KEYS = ("loss_box", "loss_cls", "total")


# ------------------------------------------------------------------------------------ stand-in
class TinyDetector(nn.Module):
    """torchvision-style detector contract in a few hundred parameters.

    Train: ``{loss_cls, loss_box}`` = multi-label presence BCE + L1 on the mean normalised box
    (means over the images of the call, so DDP gradient averaging equals one big batch).
    Eval: every class predicted with one box per image, in original pixels.
    ``nan_at`` makes the loss NaN at that forward call; ``signal_at`` sends SIGTERM to this
    process at that call (in-process interruption); ``sleep`` slows a step down.
    """

    def __init__(self, cfg: ModelConfig, *, dropout: float = 0.0, nan_at: int = -1, signal_at: int = -1,
                 sleep: float = 0.0) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.cls = nn.Linear(8, cfg.num_classes)
        self.box = nn.Linear(8, 4)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.register_buffer("scale", torch.tensor(1.0 / 255))
        self.drop = nn.Dropout(dropout)
        self.calls = 0
        self.nan_at, self.signal_at, self.sleep = nan_at, signal_at, sleep

    def _features(self, images):
        x = torch.stack([F.interpolate(im[None].float() * self.scale, size=(24, 24), mode="bilinear",
                                       align_corners=False)[0] for im in images])  # (B, 3, 24, 24)
        return F.relu(self.conv(x)).mean(dim=(2, 3))  # (B, 8)

    def forward(self, images, targets=None):
        f = self._features(images)
        sizes = [im.shape[-2:] for im in images]
        if self.training:
            self.calls += 1
            if self.sleep:
                import time

                time.sleep(self.sleep)
            if self.calls == self.signal_at:
                os.kill(os.getpid(), signal.SIGTERM)
            f = self.drop(f)
            presence = torch.zeros(len(images), self.num_classes)
            goal = torch.zeros(len(images), 4)
            for i, (t, (h, w)) in enumerate(zip(targets, sizes)):
                presence[i, t["labels"]] = 1.0
                if len(t["boxes"]):
                    goal[i] = (t["boxes"] / torch.tensor([w, h, w, h], dtype=torch.float32)).mean(0)
            loss_cls = F.binary_cross_entropy_with_logits(self.cls(f), presence)
            loss_box = (torch.sigmoid(self.box(f)) - goal).abs().mean()
            if self.calls == self.nan_at:
                loss_box = loss_box * float("nan")
            return {"loss_cls": loss_cls, "loss_box": loss_box}
        scores = torch.sigmoid(self.cls(f))  # (B, C)
        boxes = torch.sigmoid(self.box(f))  # (B, 4)
        out = []
        for i, (h, w) in enumerate(sizes):
            b = boxes[i] * torch.tensor([w, h, w, h], dtype=torch.float32)
            b = torch.stack([torch.minimum(b[0], b[2]), torch.minimum(b[1], b[3]),
                             torch.maximum(b[0], b[2]) + 1, torch.maximum(b[1], b[3]) + 1])
            out.append({"boxes": b.expand(self.num_classes, 4).clone(), "scores": scores[i],
                        "labels": torch.arange(self.num_classes)})
        return out


def make_shapes(root: Path, num_train: int = 8, num_val: int = 4) -> Path:
    from assigndet.data import generate_shapes

    if not (root / "annotations" / "instances_val.json").exists():
        generate_shapes(root, num_train=num_train, num_val=num_val, seed=0, min_side=64, max_side=96)
    return root


def tiny_config(root: Path, *, max_iter: int = 6, batch: int = 2, **solver) -> Config:
    kw = dict(ims_per_batch=batch, base_lr=0.1, reference_batch=2, max_iter=max_iter, steps=[4], warmup_iters=2,
              checkpoint_period=100, eval_period=0, log_period=1)
    kw.update(solver)
    return Config(model=ModelConfig(num_classes=7), data=DataConfig(root=str(root), num_workers=0),
                  solver=SolverConfig(**kw), test=C.TestConfig(ims_per_batch=2, num_workers=0), device="cpu",
                  seed=3)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def loss_table(out: Path) -> dict[int, tuple]:
    """iteration -> (each loss, total, lr) in key order (everything but the timings)."""
    return {r["iteration"]: tuple(v for k, v in sorted(r.items()) if k not in ("iteration", "time", "data_time"))
            for r in read_metrics(out)}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"))


# ---------------------------------------------------------------------------- schedule, groups
def test_lr_factor_constant_warmup_and_steps():
    s = SolverConfig(warmup_iters=3, warmup_factor=1 / 3, warmup_method=Warmup.constant, steps=[5, 8], gamma=0.1)
    got = [lr_factor(k, s) for k in range(10)]
    want = [1 / 3] * 3 + [1.0] * 2 + [0.1] * 3 + [0.01] * 2
    assert got == pytest.approx(want)


def test_lr_factor_linear_warmup():
    s = SolverConfig(warmup_iters=4, warmup_factor=0.2, warmup_method=Warmup.linear, steps=[2], gamma=0.5)
    assert lr_factor(0, s) == pytest.approx(0.2 * 1.0)
    assert lr_factor(2, s) == pytest.approx((0.2 * 0.5 + 0.5) * 0.5)  # warm-up and a step overlap
    assert lr_factor(4, s) == pytest.approx(0.5)


def test_linear_warmup_scheduler_state_holds_plain_values_and_resumes(tmp_path):
    """The scheduler's state goes into checkpoints read with weights_only=True: no enum in it."""
    s = SolverConfig(warmup_iters=4, warmup_factor=0.2, warmup_method=Warmup.linear, steps=[2], gamma=0.5)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sch = WarmupMultiStepLR(opt, s)
    for _ in range(3):
        opt.step()
        sch.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_factor(3, s))
    torch.save(sch.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert state["warmup_method"] == "linear" and type(state["warmup_method"]) is str
    sch2 = WarmupMultiStepLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), s)
    sch2.load_state_dict(state)
    assert sch2.get_lr() == pytest.approx([lr_factor(3, s)])


def test_param_groups_and_linear_scaling():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.gn = nn.GroupNorm(2, 4)
            self.frozen = nn.Linear(2, 2)
            self.frozen.requires_grad_(False)

    s = SolverConfig(ims_per_batch=8, base_lr=0.01, reference_batch=16, weight_decay=1e-4, weight_decay_bias=0.0,
                     bias_lr_factor=2.0, momentum=0.9)
    assert scaled_lr(s) == pytest.approx(0.005)
    opt = build_optimizer(M(), s)
    w, b = opt.param_groups
    assert w["lr"] == pytest.approx(0.005) and w["weight_decay"] == 1e-4 and len(w["params"]) == 2  # conv.w, gn.w
    assert b["lr"] == pytest.approx(0.01) and b["weight_decay"] == 0.0 and len(b["params"]) == 2  # conv.b, gn.b
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    assert isinstance(opt, torch.optim.SGD)


def test_adamw_keeps_the_groups_scaling_and_decays_decoupled():
    s = SolverConfig(optimizer=Optimizer.adamw, ims_per_batch=8, base_lr=0.002, reference_batch=8,
                     weight_decay=0.05, weight_decay_bias=0.0, bias_lr_factor=1.0, momentum=0.8)
    opt = build_optimizer(nn.Conv2d(3, 4, 3), s)
    assert isinstance(opt, torch.optim.AdamW)
    w, b = opt.param_groups
    assert w["lr"] == b["lr"] == pytest.approx(0.002) and w["weight_decay"] == 0.05 and b["weight_decay"] == 0.0
    assert w["betas"] == (0.8, 0.999)
    assert load_config("atss_R_18_shapes", ["solver.optimizer=adamw"]).solver.optimizer is Optimizer.adamw
    with pytest.raises(ConfigError, match="optimizer"):
        load_config("atss_R_18_shapes", ["solver.optimizer=adam"])


def test_scheduler_steps_after_each_iteration_and_state_roundtrip(tmp_path):
    s = SolverConfig(ims_per_batch=16, base_lr=0.01, warmup_iters=2, steps=[3], gamma=0.1)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01, momentum=0.9)
    sch = WarmupMultiStepLR(opt, s)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs == pytest.approx([0.01 / 3, 0.01 / 3, 0.01, 0.001, 0.001])
    torch.save(sch.state_dict(), tmp_path / "s.pt")
    opt2 = torch.optim.SGD([p], lr=0.01)
    sch2 = WarmupMultiStepLR(opt2, s)
    sch2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert sch2.last_epoch == 5 and sch2.get_last_lr() == sch.get_last_lr()


def test_progress_bars_cover_training_and_the_final_evaluation_with_an_eta(shapes, tmp_path, capsys):
    train(tiny_config(shapes, max_iter=3), tmp_path / "run", build_model_fn=TinyDetector, progress=True)
    err = capsys.readouterr().err
    assert "train: 100%" in err and "3/3" in err and "<00:00" in err  # tqdm's [elapsed<remaining]
    assert "eval: 100%" in err


def test_total_batch_must_divide_over_the_processes():
    with pytest.raises(ConfigError, match="not divisible"):
        validate_solver(SolverConfig(ims_per_batch=3), world_size=2)
    assert validate_solver(SolverConfig(ims_per_batch=4), world_size=2) == 2


# -------------------------------------------------------------------------------- training runs
def test_train_writes_everything(shapes, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(shapes, max_iter=4, checkpoint_period=2, eval_period=2)
    res = train(cfg, out, build_model_fn=TinyDetector, progress=False)
    history = [json.loads(line) for line in (out / "eval_history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [2, 4]
    assert res.iteration == 4 and not res.interrupted and res.exit_code == 0
    assert (out / "config.yaml").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.safetensors"
    assert (out / "model_0000002.safetensors").is_file() and (out / "model_0000002.state.pt").is_file()
    assert list((out / "tensorboard").iterdir())
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert set(rows[0]) >= {"iteration", "loss_cls", "loss_box", "total", "lr", "time", "data_time"}
    assert rows[0]["total"] == pytest.approx(rows[0]["loss_cls"] + rows[0]["loss_box"], rel=1e-6)
    assert [r["lr"] for r in rows] == pytest.approx([0.1 / 3, 0.1 / 3, 0.1, 0.1])
    ev = json.loads((out / "eval.json").read_text())
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP60", "AP70", "AP80", "AP90", "AR", "per_class"):
        assert k in ev
    assert set(ev["per_class"]) == {"circle", "rectangle", "triangle", "star", "cross", "ring", "diamond"}
    assert 0 <= ev["AP"] <= 1 and ev["iteration"] == 4 and res.metrics["AP"] == ev["AP"]
    dets = json.loads((out / "detections.json").read_text())
    assert {d["category_id"] for d in dets} == {1, 2, 3, 5, 7, 9, 11}
    # resuming a finished run does nothing
    again = train(cfg, out, resume=True, build_model_fn=TinyDetector, progress=False)
    assert again.iteration == 4 and read_metrics(out) == rows


def test_sigterm_then_resume_equals_uninterrupted(shapes, tmp_path):
    mk = lambda **kw: (lambda c: TinyDetector(c, dropout=0.3, **kw))  # noqa: E731  dropout: RNG must be restored
    cfg = tiny_config(shapes, max_iter=7, checkpoint_period=100, eval_period=2)  # evaluation must not shift RNG
    ref = tmp_path / "ref"
    train(cfg, ref, build_model_fn=mk(), progress=False, evaluate_at_end=False)

    out = tmp_path / "cut"
    res = train(cfg, out, build_model_fn=mk(signal_at=3), progress=False, evaluate_at_end=False)
    assert res.interrupted and res.signal == signal.SIGTERM and res.exit_code == 143 and res.iteration == 3
    assert (out / "last_checkpoint").read_text().strip() == "model_0000003.safetensors"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    res2 = train(cfg, out, resume=True, build_model_fn=mk(), progress=False, evaluate_at_end=False)
    assert res2.iteration == 7 and not res2.interrupted
    assert loss_table(out) == loss_table(ref)  # exactly equal, every iteration


def test_non_finite_loss_stops_and_keeps_last_checkpoint(shapes, tmp_path):
    out = tmp_path / "nan"
    cfg = tiny_config(shapes, max_iter=6, checkpoint_period=2)
    with pytest.raises(FloatingPointError, match="iteration 3"):
        train(cfg, out, build_model_fn=lambda c: TinyDetector(c, nan_at=4), progress=False)
    assert (out / "last_checkpoint").read_text().strip() == "model_0000002.safetensors"
    assert not (out / "model_0000004.safetensors").exists() and not (out / "model_final.safetensors").exists()


def test_bf16_autocast_and_grad_clipping_on_cpu(shapes, tmp_path):
    cfg = tiny_config(shapes, max_iter=2, amp=AMP.bf16, clip_grad_norm=0.01)
    res = train(cfg, tmp_path / "bf16", build_model_fn=TinyDetector, progress=False, evaluate_at_end=False)
    assert res.iteration == 2
    rows = read_metrics(tmp_path / "bf16")
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in rows)


def test_fp16_on_cpu_is_a_clear_error(shapes, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        train(tiny_config(shapes, amp=AMP.fp16), tmp_path / "x", build_model_fn=TinyDetector, progress=False)


def test_num_classes_mismatch(shapes, tmp_path):
    cfg = tiny_config(shapes)
    cfg.model.num_classes = 80
    with pytest.raises(ConfigError, match="model.num_classes=7"):
        train(cfg, tmp_path / "x", build_model_fn=TinyDetector, progress=False)


def test_evaluate_max_images_and_inference(shapes, tmp_path):
    cfg = tiny_config(shapes)
    cfg.test.max_images = 3
    torch.manual_seed(0)
    model = TinyDetector(cfg.model)
    state = torch.get_rng_state()
    m = evaluate(model, cfg, tmp_path, verbose=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert m["num_images"] == 3 and (tmp_path / "eval.json").is_file()
    preds = inference(model, [torch.zeros(3, 40, 50, dtype=torch.uint8)] * 3, batch_size=2)
    assert len(preds) == 3 and preds[0]["boxes"].shape == (7, 4) and model.training
