import os

import pytest
import torch
from torch import nn

from assigndet import checkpoints as ck
from assigndet.checkpoints import (CheckpointError, last_checkpoint, load_training_state, load_weights,
                                   read_weights, save_checkpoint, save_weights, state_path_for)
from assigndet.utils import get_rng_state, set_rng_state


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(4, 6)
        self.out = nn.Linear(6, 4, bias=False)
        self.out.weight = nn.Parameter(self.emb.weight.t())  # non-contiguous view
        self.tied = nn.Linear(4, 6)
        self.tied.weight = self.emb.weight  # shared tensor
        self.register_buffer("stat", torch.arange(5.0))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


def test_roundtrip_shared_noncontiguous_and_buffers(tmp_path):
    torch.manual_seed(0)
    a = Tied()
    path = save_weights(a, tmp_path / "w.safetensors", metadata={"class_names": '["a"]'})
    state, meta = read_weights(path)
    assert "stat" in state and "scratch" not in state
    assert meta["class_names"] == '["a"]'
    torch.manual_seed(1)
    b = Tied()
    b.stat.zero_()
    rep = load_weights(b, path)
    assert rep.ok
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # DDP-like wrapper is unwrapped
    wrapper = nn.Module()
    wrapper.module = Tied()
    load_weights(wrapper, path)
    assert torch.equal(wrapper.module.emb.weight, a.emb.weight)


def test_mismatch_names_keys(tmp_path):
    path = save_weights(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), tmp_path / "w.safetensors")
    other = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as e:
        load_weights(other, path)
    msg = str(e.value)
    assert "missing keys (2): 2.weight, 2.bias" in msg
    assert "shape mismatch" in msg and "0.weight (file [4, 3] vs model [5, 3])" in msg
    rep = load_weights(other, path, strict=False)
    assert not rep.ok and ("1.bias", (2,), (2,)) not in rep.mismatched
    assert torch.equal(other[1].bias, read_weights(path)[0]["1.bias"])
    smaller = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(2\): 1.bias, 1.weight"):
        load_weights(smaller, path)


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(nn.Linear(2, 2), tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_weights(nn.Linear(2, 2), bad)
    other = tmp_path / "x.npz"
    other.write_bytes(b"")
    with pytest.raises(CheckpointError, match="unsupported"):
        load_weights(nn.Linear(2, 2), other)


def test_pth_of_a_state_dict_loads_with_the_prefix_stripped(tmp_path):
    m = nn.Linear(2, 3)
    p = tmp_path / "own.pth"
    torch.save({"model": {f"module.{k}": v for k, v in m.state_dict().items()}, "iteration": 3}, p)
    n = nn.Linear(2, 3)
    rep = load_weights(n, p)
    assert rep.ok and rep.layout == "assigndet"
    assert torch.equal(n.weight, m.weight)


class RPNLike(nn.Module):
    """A plain module whose own key names look like a released layout (``rpn.*``)."""

    def __init__(self):
        super().__init__()
        self.rpn = nn.Module()
        self.rpn.head = nn.Linear(2, 2)


def test_importing_the_detectors_installs_no_loader_hook(tmp_path):
    """Loading is one explicit function: importing the detectors changes nothing in it, and a
    model that is not a dense detector gets its own ``.pth`` back unconverted even when its keys
    look like maskrcnn-benchmark's."""
    import assigndet.detectors  # noqa: F401  (formerly installed a global .pth hook)

    assert not hasattr(ck, "register_pth_loader") and not hasattr(ck, "_PTH_LOADER")
    m = RPNLike()
    p = tmp_path / "rpn_like.pth"
    torch.save(m.state_dict(), p)
    n = RPNLike()
    rep = load_weights(n, p)
    assert rep.ok and rep.layout == "assigndet" and torch.equal(n.rpn.head.weight, m.rpn.head.weight)


def test_forced_layout_needs_a_dense_detector(tmp_path):
    p = tmp_path / "w.pth"
    torch.save(nn.Linear(2, 2).state_dict(), p)
    with pytest.raises(ValueError, match="unknown checkpoint layout 'caffe'"):
        load_weights(nn.Linear(2, 2), p, layout="caffe")
    with pytest.raises(CheckpointError, match="released checkpoints load into"):
        load_weights(nn.Linear(2, 2), p, layout="maskrcnn_benchmark")


def test_deprecated_alias_warns_and_loads(tmp_path):
    m = nn.Linear(2, 3)
    path = save_weights(m, tmp_path / "w.safetensors")
    n = nn.Linear(2, 3)
    with pytest.warns(DeprecationWarning, match="checkpoints.load_weights"):
        rep = ck.load_detector_weights(n, path)
    assert rep.ok and torch.equal(n.weight, m.weight)


def test_training_state_weights_only_with_rng(tmp_path):
    m = nn.Linear(3, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    rng = get_rng_state()
    expected = torch.rand(3)
    state = {"iteration": 7, "optimizer": opt.state_dict(), "rng": [rng], "config": "a: 1\n"}
    w = save_checkpoint(tmp_path, "model_0000007", model=m, state=state)
    assert last_checkpoint(tmp_path) == w
    loaded = load_training_state(state_path_for(w))  # uses weights_only=True
    assert loaded["iteration"] == 7 and loaded["config"] == "a: 1\n"
    set_rng_state(loaded["rng"][0])
    assert torch.equal(torch.rand(3), expected)
    opt2 = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m = nn.Linear(3, 2)
    first = save_checkpoint(tmp_path, "model_0000001", model=m, state={"iteration": 1})
    saved = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m.weight.add_(1)

    real_fsync = os.fsync
    calls = {"n": 0}

    def dying_fsync(fd):  # the machine "dies" while the second file of the new checkpoint is written
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("simulated crash during write")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", dying_fsync)
    with pytest.raises(CheckpointError, match="simulated crash during write; last_checkpoint still names "
                                              "model_0000001.safetensors"):
        save_checkpoint(tmp_path, "model_0000002", model=m, state={"iteration": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not (tmp_path / "model_0000002.state.pt").exists(), "half a checkpoint is removed"

    assert last_checkpoint(tmp_path) == first
    assert not list(tmp_path.glob(".*.tmp")), "temporary files are cleaned up"
    assert not (tmp_path / "model_0000002.safetensors").exists()
    n = nn.Linear(3, 2)
    load_weights(n, last_checkpoint(tmp_path))
    for k, v in saved.items():
        assert torch.equal(n.state_dict()[k], v)
    assert load_training_state(state_path_for(first))["iteration"] == 1


def test_overwrite_is_atomic_on_partial_data(tmp_path, monkeypatch):
    """A write that dies after some bytes never replaces the existing file."""
    path = tmp_path / "w.safetensors"
    save_weights(nn.Linear(2, 2), path)
    before = path.read_bytes()

    import assigndet.utils as U

    real_replace = U.os.replace

    def no_replace(*a, **k):
        raise KeyboardInterrupt  # e.g. SIGINT between write and rename

    monkeypatch.setattr(U.os, "replace", no_replace)
    with pytest.raises(KeyboardInterrupt):
        save_weights(nn.Linear(2, 2), path)
    monkeypatch.setattr(U.os, "replace", real_replace)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_pointer_to_missing_file(tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0000009.safetensors\n")
    with pytest.raises(CheckpointError, match="does not exist"):
        last_checkpoint(tmp_path)
    assert last_checkpoint(tmp_path / "nothing") is None
