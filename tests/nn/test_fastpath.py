"""The fast path of the ResNet body (nn/fastpath.py) against the plain modules: BatchNorm folded
into its convolution (FrozenBN always, BatchNorm when evaluating), channels-last on CPU."""
import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from assigndet.nn import ResNetBody
from assigndet.nn import fastpath
from assigndet.nn.fastpath import conv_bn, conv_bn_relu, foldable, stage_forward
from torchvision.models.resnet import BasicBlock

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_statistics(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine terms, as pretrained weights have."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            n = m.running_mean.numel()
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _pair(**kw) -> tuple[ResNetBody, ResNetBody]:
    torch.manual_seed(0)
    fast = ResNetBody(fast=True, **kw)
    _random_statistics(fast)
    plain = copy.deepcopy(fast)
    plain.fast = False
    return fast, plain


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    return bool(((a - b).abs().max() <= rtol * b.abs().max()).item())


@pytest.mark.parametrize("depth,style,norm", [(50, "caffe2", "frozen_bn"), (18, "pytorch", "frozen_bn"),
                                              (50, "pytorch", "bn"), (18, "caffe2", "bn")])
def test_fast_body_gives_the_plain_features_in_eval(depth, style, norm):
    fast, plain = _pair(depth=depth, style=style, norm=norm, base_width=16, frozen_bn_eps=1e-5)
    fast.eval(), plain.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(fast(x), plain(x)):
            assert a.shape == b.shape and _close(a, b)


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_fast_body_gives_the_plain_features_and_gradients_in_training(norm):
    """In float64: a from-scratch R-50 with training BatchNorm on 2 small images amplifies float32
    rounding to percents in the gradients, on either path alike (NCHW vs NHWC order of sums)."""
    fast, plain = _pair(depth=50, norm=norm, base_width=16, freeze_at=1)
    fast.train().double(), plain.train().double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    outs = [sum((f * f).mean() for f in m(x)) for m in (fast, plain)]
    assert _close(outs[0], outs[1], 1e-10)
    for o in outs:
        o.backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert grads and "layer1.0.conv1.weight" in grads and "conv1.weight" not in grads  # the stem is frozen
    for n, p in fast.named_parameters():
        assert (p.grad is None) == (n not in grads), n
        if p.grad is not None:
            assert _close(p.grad, grads[n], 1e-9), n
    if norm == "bn":  # a training BatchNorm is not folded: its running statistics moved as on the plain path
        assert torch.allclose(fast.bn1.running_mean, plain.bn1.running_mean)
        assert not torch.equal(fast.layer1[0].bn1.running_mean, torch.zeros_like(fast.layer1[0].bn1.running_mean))


def test_folded_weights_follow_loaded_and_stepped_weights():
    fast, plain = _pair(depth=18, base_width=8)
    fast.eval(), plain.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fast(x)  # caches the folded weights
        other = copy.deepcopy(plain.state_dict())
        other["layer2.0.conv1.weight"] *= 3.0
        other["layer3.1.bn2.running_var"] *= 2.0
        fast.load_state_dict(other)
        plain.load_state_dict(other)
        assert _close(fast(x)[-1], plain(x)[-1])
        for m in (fast, plain):  # an optimiser-like in-place update under no_grad
            m.layer4[0].conv2.weight.mul_(0.5)
        assert _close(fast(x)[-1], plain(x)[-1])


def test_state_dict_is_the_same_on_both_paths():
    fast, plain = _pair(depth=18, base_width=8)
    fast.eval()
    with torch.no_grad():
        fast(torch.randn(1, 3, 32, 32))
    a, b = fast.state_dict(), plain.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_only_frozen_or_evaluating_batchnorm_after_a_plain_conv_is_folded():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    bn = nn.BatchNorm2d(4)
    assert not foldable(conv, bn.train()) and foldable(conv, bn.eval())
    assert foldable(conv, FrozenBatchNorm2d(4)) and not foldable(conv, nn.GroupNorm(2, 4))
    assert not foldable(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), FrozenBatchNorm2d(4))
    # a conv with a bias folds the bias through the scale too
    frozen = FrozenBatchNorm2d(4, eps=1e-5)
    _random_statistics(frozen)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert _close(conv_bn(conv, frozen, x), frozen(conv(x)), 1e-5)


def test_channels_last_reaches_the_features_on_cpu_only_on_the_fast_path():
    fast, plain = _pair(depth=18, base_width=8)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert fast.eval()(x)[0].is_contiguous(memory_format=torch.channels_last)
        assert plain.eval()(x)[0].is_contiguous()


def test_a_hook_inside_the_body_fires_and_sees_the_plain_features():
    fast, plain = _pair(depth=18, base_width=8)
    fast.eval(), plain.eval()
    seen = []
    handle = fast.layer3.register_forward_hook(lambda m, i, out: seen.append(out))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        hooked = fast(x)
        handle.remove()
        assert len(seen) == 1 and _close(seen[0], plain(x)[2])
        assert hooked[0].is_contiguous()  # the plain modules ran
        assert fast(x)[0].is_contiguous(memory_format=torch.channels_last)  # without the hook: fast again


def test_repeated_eval_keeps_the_folded_weights_and_switching_modes_drops_them():
    fast, _ = _pair(depth=18, base_width=8)
    bn = fast.layer2[0].bn1
    with torch.no_grad():
        fast.eval()(torch.randn(1, 3, 32, 32))
        cached = bn.__dict__["_assigndet_fold"]
        fast.eval()  # as every inference() call does
        assert bn.__dict__["_assigndet_fold"] is cached
        fast.train()
        assert "_assigndet_fold" not in bn.__dict__


fused = pytest.mark.skipif(fastpath._POINTWISE is None, reason="this torch has no oneDNN fused convolution")


@fused
@pytest.mark.parametrize("depth,norm", [(50, "frozen_bn"), (18, "frozen_bn"), (18, "bn")])
def test_fused_relu_and_residual_give_the_unfused_features_and_gradients(depth, norm, monkeypatch):
    """float32 on CPU, where the fusion runs: the same numbers as the separate conv, sum and ReLU."""
    fast, _ = _pair(depth=depth, norm=norm, base_width=16, freeze_at=1)
    fast.eval() if norm == "bn" else fast.train()  # a training BatchNorm is not folded, so not fused
    x = torch.randn(2, 3, 64, 96)

    def run():
        out = fast(x)
        loss = sum((f * f).mean() for f in out)
        params = [p for p in fast.parameters() if p.requires_grad]
        return out, torch.autograd.grad(loss, params)

    fused_out, fused_grads = run()
    monkeypatch.setattr(fastpath, "_POINTWISE", None)
    out, grads = run()
    for a, b in zip(fused_out, out):
        assert a.is_contiguous(memory_format=torch.channels_last) and _close(a, b, 1e-6)
    for a, b in zip(fused_grads, grads):
        assert _close(a, b, 1e-5)


@fused
def test_conv_bn_relu_fuses_only_where_it_can_and_adds_the_residual():
    conv, frozen = nn.Conv2d(8, 8, 3, padding=1), FrozenBatchNorm2d(8, eps=1e-5)
    _random_statistics(frozen)
    x = torch.randn(1, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    res = torch.randn(1, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expect = (frozen(conv(x)) + res).relu()
        assert _close(conv_bn_relu(conv, frozen, x, res), expect, 1e-6)
        conv64, frozen64 = copy.deepcopy(conv).double(), copy.deepcopy(frozen).double()
        unfused = conv_bn_relu(conv64, frozen64, x.double().contiguous(), res.double().contiguous())
        assert unfused.is_contiguous() and _close(unfused.float(), expect, 1e-6)  # float64, NCHW: unfused
        assert _close(conv_bn_relu(conv, frozen, x), frozen(conv(x)).relu(), 1e-6)
    assert fastpath._fusable(x, res) and not fastpath._fusable(x.double(), None)
    assert not fastpath._fusable(x, res.contiguous())  # a residual in another layout is summed apart


@fused
def test_without_autograd_blocks_sum_into_their_own_tensors_only():
    """Inference writes a block's result over its residual only where nobody else holds it: a stage's
    input (a returned feature of the stage before) survives its first block even without a downsample."""
    torch.manual_seed(0)
    stage = nn.Sequential(*(BasicBlock(8, 8, norm_layer=FrozenBatchNorm2d) for _ in range(3))).eval()
    _random_statistics(stage)
    x = torch.randn(1, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    kept = x.clone()
    with torch.no_grad():
        expect = stage(x)
        out = stage_forward(stage, x)
        assert torch.equal(x, kept) and _close(out, expect, 1e-6)
        assert _close(stage_forward(stage, x.clone(), private=True), expect, 1e-6)


@fused
def test_fast_body_in_inference_gives_the_unfused_features(monkeypatch):
    fast, _ = _pair(depth=50, base_width=16)
    fast.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        fused_out = fast(x)
        monkeypatch.setattr(fastpath, "_POINTWISE", None)
        for a, b in zip(fused_out, fast(x)):
            assert _close(a, b, 1e-6)


@fused
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's own, from flags()
def test_oneDNN_switched_off_at_run_time_runs_the_unfused_ops():
    x = torch.randn(1, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    assert fastpath._fusable(x, None)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not fastpath._fusable(x, None)
