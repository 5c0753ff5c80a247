"""The dense head's fast path (layer by layer over the levels, weights laid out once, the box and
quality predictors in one convolution) against its plain modules."""
import copy

import pytest
import torch

from assigndet.nn import DenseHead

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]


def _pair(**kw) -> tuple[DenseHead, DenseHead]:
    torch.manual_seed(0)
    fast = DenseHead(in_channels=32, num_classes=5, fast=True, **kw)
    with torch.no_grad():
        for p in fast.parameters():
            p.normal_(0.0, 0.2)  # away from the init's near-zero weights, so that every value counts
    plain = copy.deepcopy(fast)
    plain.fast = False
    return fast, plain


def _features(channels_last: bool) -> list[torch.Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [torch.randn(2, 32, *s).contiguous(memory_format=fmt).requires_grad_() for s in SIZES]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return bool(((a - b).abs().max() <= rtol * b.abs().max()).item())


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("kw", [{}, {"num_anchors": 3, "conv_bias": False}, {"num_convs": 2, "norm": "none"}])
def test_fast_head_gives_the_plain_outputs_and_gradients(channels_last, kw):
    fast, plain = _pair(**kw)
    feats = _features(channels_last)
    results = []
    for head in (fast, plain):
        outs = head(feats)
        loss = sum((o * o).mean() for o in outs)
        results.append((outs, torch.autograd.grad(loss, [*head.parameters(), *feats])))
    (fast_outs, fast_grads), (outs, grads) = results
    for a, b in zip(fast_outs, outs):
        assert a.shape == b.shape and _close(a, b, 1e-5)
    for a, b in zip(fast_grads, grads):
        assert a.shape == b.shape and _close(a, b, 1e-4)
    assert list(fast.state_dict()) == list(plain.state_dict())


def test_a_hook_inside_the_head_fires_on_every_level():
    fast, plain = _pair()
    seen = []
    fast.bbox_tower[0].register_forward_hook(lambda m, i, out: seen.append(out.shape))
    feats = _features(True)
    with torch.no_grad():
        outs, expect = fast(feats), plain(feats)
    assert [tuple(s[-2:]) for s in seen] == SIZES
    assert all(_close(a, b, 1e-5) for a, b in zip(outs, expect))


def test_features_beyond_the_head_levels_are_ignored_on_both_paths():
    fast, plain = _pair(num_levels=4)
    feats = _features(True)  # five levels for a four-level head
    with torch.no_grad():
        outs, expect = fast(feats), plain(feats)
    assert all(a.shape == b.shape and _close(a, b, 1e-5) for a, b in zip(outs, expect))
