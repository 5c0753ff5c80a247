"""``model.fast_path`` (FrozenBN folded into the convs, channels-last on CPU) against
``model.fast_path=false`` on every architecture: the same training losses and the same
detections, from the same weights (a frozen-BN ResNet-50 with non-trivial statistics)."""
import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import assigndet
from conftest import TINY_OVERRIDES

pytestmark = pytest.mark.usefixtures("one_thread")

#: a frozen-BN bottleneck ResNet as the COCO presets have, at toy width
FROZEN = ["model.backbone.depth=50", "model.backbone.norm=frozen_bn", "model.backbone.freeze_at=2"]
TWO_STAGE = ["model.num_classes=3", "model.backbone.base_width=8", "model.fpn_channels=16",
             "model.input.min_size_train=[64]", "model.input.max_size_train=96", "model.input.min_size_test=64",
             "model.input.max_size_test=96", "model.rcnn.box_head_dim=32", "model.rcnn.rpn_post_nms_top_n_train=64",
             "model.rcnn.rpn_post_nms_top_n_test=64", "model.rcnn.box_batch_size_per_image=32"]
PRESETS = {"atss_R_50_FPN_1x": TINY_OVERRIDES, "paa_R_50_FPN_1x": TINY_OVERRIDES,
           "dynamic_atss_R_50_FPN_1x": TINY_OVERRIDES, "faster_rcnn_R_50_FPN_1x": TWO_STAGE,
           "iounet_R_50_FPN_1x": TWO_STAGE}


def _models(preset: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    fast = assigndet.build_detector(preset, overrides=[*PRESETS[preset], *FROZEN])
    g = torch.Generator().manual_seed(1)
    for m in fast.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.copy_(0.5 + torch.rand(n, generator=g))
    plain = assigndet.build_detector(preset, overrides=[*PRESETS[preset], *FROZEN, "model.fast_path=false"])
    plain.load_state_dict(fast.state_dict())
    assert fast.body.fast and not plain.body.fast
    return fast, plain


def _data():
    g = torch.Generator().manual_seed(2)
    images = [torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[5.0, 8.0, 40.0, 50.0], [30.0, 20.0, 85.0, 66.0]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[12.0, 10.0, 60.0, 45.0]]), "labels": torch.tensor([1])}]
    return images, targets


@pytest.mark.parametrize("preset", list(PRESETS))
def test_fast_path_gives_the_plain_losses(preset):
    fast, plain = _models(preset)
    images, targets = _data()
    losses = []
    for m in (fast, plain):
        torch.manual_seed(3)  # the two-stage samplers draw the same RoIs
        losses.append(m.train()(images, copy.deepcopy(targets)))
    assert set(losses[0]) == set(losses[1])
    for k in losses[0]:
        torch.testing.assert_close(losses[0][k], losses[1][k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("preset", [p for p in PRESETS if not p.startswith("iounet")])
def test_fast_path_gives_the_plain_detections(preset):
    """(IoU-Net's losses are compared above; its detections are not: at random weights the IoU head
    predicts unbounded "IoUs" whose gradient ascent turns 1e-5 differences into other boxes.)"""
    fast, plain = _models(preset)
    for m in (fast, plain):
        m.cfg.score_thresh = 0.0  # random heads score below the usual 0.05: keep every candidate
    images, _ = _data()
    with torch.no_grad():
        a, b = fast.eval()(images), plain.eval()(images)
    for x, y in zip(a, b):
        assert len(x["scores"]) == len(y["scores"]) > 0
        torch.testing.assert_close(x["scores"], y["scores"], rtol=0, atol=2e-5)
        same = (x["labels"] == y["labels"]).float().mean()
        assert same > 0.95  # near-ties may swap places; the boxes of the same ranks agree below
        close = ((x["boxes"] - y["boxes"]).abs().max(1).values < 0.01).float().mean()
        assert close > 0.95
