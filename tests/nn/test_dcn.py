"""Modulated deformable conv v2 (SPEC §1.3, §2.1, §7.1): channel layout, names, placement."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import assigndet
from assigndet.nn.backbone import ResNetBody
from assigndet.nn.dcn import DeformConv
from assigndet.released import convert_state_dict


def _dcn(groups=1, stride=1, bias=True, seed=0):
    torch.manual_seed(seed)
    m = DeformConv(8, 8, 3, stride=stride, padding=1, groups=groups, bias=bias)
    torch.nn.init.normal_(m.conv.weight)
    if bias:
        torch.nn.init.normal_(m.conv.bias)
    return m


def test_fresh_dcn_is_a_half_masked_regular_conv():
    m = _dcn()
    x = torch.randn(2, 8, 9, 11)
    ref = F.conv2d(x, m.conv.weight * 0.5, m.conv.bias, padding=1)  # zero offsets, mask sigmoid(0)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dy,dx", [(0, 1), (1, 0), (-1, 2)])
def test_offset_channels_are_dy_dx_per_tap_then_mask(dy, dx):
    """Offsets (dy, dx) interleaved per kernel tap (channels 2k, 2k + 1), then 9 mask logits:
    a constant integer offset is a shift of the input, and a saturated mask is 1."""
    m = _dcn(seed=1)
    with torch.no_grad():
        bias = torch.zeros(27)
        bias[0:18:2] = dy
        bias[1:18:2] = dx
        bias[18:] = 30.0  # mask = sigmoid(30) = 1
        m.offset.bias.copy_(bias)
    x = torch.randn(1, 8, 10, 12)
    H, W = x.shape[-2:]
    # out[i, j] = sum_t w_t x[i + ty + dy, j + tx + dx], x zero outside the image
    full = F.conv2d(F.pad(x, (4, 4, 4, 4)), m.conv.weight, m.conv.bias)  # full[a, b] -> centre x[a - 3, b - 3]
    ref = full[..., dy + 3: dy + 3 + H, dx + 3: dx + 3 + W]
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)


def test_mask_scales_each_tap():
    m = _dcn(seed=2, bias=False)
    with torch.no_grad():
        bias = torch.zeros(27)
        bias[18:] = torch.linspace(-2, 2, 9)
        m.offset.bias.copy_(bias)
    x = torch.randn(1, 8, 7, 7)
    w = m.conv.weight * torch.sigmoid(torch.linspace(-2, 2, 9)).view(1, 1, 3, 3)
    torch.testing.assert_close(m(x), F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)


def test_grouped_strided_dcn_equals_grouped_conv_at_zero_offset():
    m = _dcn(groups=4, stride=2, seed=3)
    x = torch.randn(1, 8, 9, 9)
    torch.testing.assert_close(m(x), F.conv2d(x, m.conv.weight * 0.5, m.conv.bias, stride=2, padding=1, groups=4),
                               rtol=1e-4, atol=1e-4)


def test_resnet_dcn_stages_and_names():
    body = ResNetBody(depth=50, style="caffe2", stage_with_dcn=[False, True, True, True], freeze_at=2)
    sd = body.state_dict()
    assert "layer1.0.conv2.weight" in sd and "layer1.0.conv2.offset.weight" not in sd
    assert sd["layer2.0.conv2.offset.weight"].shape == (27, 128, 3, 3) and sd["layer2.0.conv2.offset.bias"].shape == (27,)
    assert sd["layer2.0.conv2.conv.weight"].shape == (128, 128, 3, 3) and "layer2.0.conv2.conv.bias" not in sd
    assert all(isinstance(blk.conv2, DeformConv) for layer in (body.layer2, body.layer3, body.layer4) for blk in layer)
    assert body.layer2[0].conv1.stride == (2, 2) and body.layer2[0].conv2.stride == (1, 1)  # caffe2 stride
    assert (sd["layer3.1.conv2.offset.weight"] == 0).all()  # zero-initialised offsets
    x = torch.randn(1, 3, 64, 64)
    assert [tuple(f.shape[-2:]) for f in body(x)] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_resnext_dcn_in_c4_c5_with_stride_in_3x3():
    m = assigndet.build_detector("atss_dcnv2_X_101_32x8d_FPN_2x")
    sd = m.state_dict()
    assert "body.layer2.0.conv2.weight" in sd  # c3: regular conv
    assert sd["body.layer3.0.conv2.conv.weight"].shape == (1024, 32, 3, 3)  # 32 groups x 32 channels
    blk = m.body.layer3[0]
    assert blk.conv1.stride == (1, 1) and blk.conv2.conv.stride == (2, 2) and blk.conv2.offset.stride == (2, 2)
    for tower in ("cls_tower", "bbox_tower"):  # USE_DCN_IN_TOWER: the last conv of each tower
        assert sd[f"head.{tower}.9.offset.weight"].shape == (27, 256, 3, 3)
        assert sd[f"head.{tower}.9.conv.weight"].shape == (256, 256, 3, 3)
        assert sd[f"head.{tower}.9.conv.bias"].shape == (256,)
        assert f"head.{tower}.6.offset.weight" not in sd
    assert m.cfg.backbone.stage_with_dcn == [False, False, True, True] and m.cfg.backbone.style == "pytorch"


def test_original_dcn_keys_map():
    """maskrcnn-benchmark's DFConv2d names (``conv2.offset`` / ``conv2.conv``,
    ``cls_tower.9.offset`` / ``cls_tower.9.conv``) land on the same modules."""
    m = assigndet.build_detector("atss_dcnv2_R_50_FPN_1x")
    state = {"backbone.body.layer3.2.conv2.offset.weight": torch.ones(27, 256, 3, 3),
             "backbone.body.layer3.2.conv2.conv.weight": torch.ones(256, 256, 3, 3),
             "rpn.head.cls_tower.9.offset.bias": torch.ones(27),
             "rpn.head.bbox_tower.9.conv.weight": torch.ones(256, 256, 3, 3)}
    out, layout = convert_state_dict(state, m.cfg, m.state_dict().keys())
    assert layout == "maskrcnn_benchmark"
    own = m.state_dict()
    assert set(out) == {"body.layer3.2.conv2.offset.weight", "body.layer3.2.conv2.conv.weight",
                        "head.cls_tower.9.offset.bias", "head.bbox_tower.9.conv.weight"}
    assert all(own[k].shape == v.shape for k, v in out.items())


def test_dcn_detector_trains_and_predicts(tiny_overrides):
    from assigndet.presets import load_config
    from assigndet.detectors import build_model

    torch.manual_seed(0)
    cfg = load_config("atss_R_18_shapes", tiny_overrides + [
        "model.backbone.depth=50", "model.backbone.stage_with_dcn=[false,true,true,true]", "model.head_dcn=true"])
    m = build_model(cfg.model).train()
    imgs = [torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)]
    losses = m(imgs, [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}])
    sum(losses.values()).backward()
    assert m.head.cls_tower[0].offset.weight.grad is not None
    assert m.body.layer3[0].conv2.offset.weight.grad is not None
    m.eval()
    with torch.no_grad():
        assert len(m(imgs)) == 1


def test_mmdet_dcn_keys_map():
    """mmdetection's DCN bottleneck (``conv2.weight`` + ``conv2.conv_offset``) -> conv / offset."""
    m = assigndet.build_detector("atss_R_50_FPN_1x_mmdet", overrides=["model.backbone.stage_with_dcn=[false,false,true,true]"])
    state = {"backbone.layer3.0.conv2.weight": torch.ones(256, 256, 3, 3),
             "backbone.layer3.0.conv2.conv_offset.weight": torch.ones(27, 256, 3, 3),
             "backbone.layer3.0.conv2.conv_offset.bias": torch.ones(27),
             "backbone.layer2.0.conv2.weight": torch.ones(128, 128, 3, 3)}
    out, layout = convert_state_dict(state, m.cfg, m.state_dict().keys())
    assert layout == "mmdet"
    assert set(out) == {"body.layer3.0.conv2.conv.weight", "body.layer3.0.conv2.offset.weight",
                        "body.layer3.0.conv2.offset.bias", "body.layer2.0.conv2.weight"}
