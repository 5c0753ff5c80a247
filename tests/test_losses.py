"""Loss primitives: the one focal loss (training and PAA's anchor scores), the quality focal loss."""
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from assigndet.losses import focal_loss_per_anchor, focal_loss_sum, quality_focal_loss_sum


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.3, 1.5)])
def test_focal_loss_equals_torchvision_per_class_form(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(300, 6, generator=g) * 4).double().requires_grad_()
    labels = torch.randint(-1, 7, (300,), generator=g)  # -1 ignore, 6 background
    onehot = torch.nn.functional.one_hot(labels.clamp(min=0), 7)[:, :6].double()
    ref = sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma, reduction="none").sum(1)
    ref = torch.where(labels >= 0, ref, 0.0)
    got = focal_loss_per_anchor(logits, labels, alpha=alpha, gamma=gamma)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert (got[labels == -1] == 0).all()
    (g_got,) = torch.autograd.grad(got.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(focal_loss_sum(logits, labels, alpha=alpha, gamma=gamma), ref.sum())


def test_focal_loss_is_stable_for_large_logits():
    logits = torch.tensor([[60.0, -60.0], [-60.0, 60.0]], requires_grad=True)
    out = focal_loss_per_anchor(logits, torch.tensor([0, 2]))  # a confident hit; a confident false positive
    assert torch.isfinite(out).all() and out[0] < 1e-20 and out[1] > 40
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_quality_focal_loss_hand_computed():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    labels = torch.tensor([1, 2])  # anchor 0 positive for class 1, anchor 1 background
    q = torch.tensor([0.7, 0.0])
    p = logits.sigmoid()
    bce = lambda x, t: -(t * torch.log(x) + (1 - t) * torch.log(1 - x))  # noqa: E731
    expect = (p[0, 0] ** 2 * bce(p[0, 0], 0.0) + (0.7 - p[0, 1]).abs() ** 2 * bce(p[0, 1], 0.7)
              + p[1, 0] ** 2 * bce(p[1, 0], 0.0) + p[1, 1] ** 2 * bce(p[1, 1], 0.0))
    torch.testing.assert_close(quality_focal_loss_sum(logits, labels, q), expect)
