"""The dense detectors' shared machinery (detectors/base.py): losses, inference format, overfitting."""
import pytest
import torch

import assigndet
from assigndet.presets import load_config
from assigndet.detectors import TargetError, build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest on a shared CPU


def tiny(arch="atss", overrides=()):
    from conftest import TINY_OVERRIDES

    torch.manual_seed(0)
    cfg = load_config("atss_R_18_shapes", TINY_OVERRIDES + [f"model.arch={arch}"] + list(overrides))
    return build_model(cfg.model)


def images_and_targets():
    g = torch.Generator().manual_seed(0)
    imgs = [(torch.rand(3, 64, 80, generator=g) * 255).to(torch.uint8), (torch.rand(3, 72, 64, generator=g) * 255).to(torch.uint8)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
    ]
    return imgs, targets


def test_r50_preset_matches_original_size():
    m = assigndet.build_detector("atss_R_50_FPN_1x")
    assert sum(p.numel() for p in m.parameters()) == 32_244_250  # SPEC §7.1: ~32.24 M
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert all(n.startswith(("body.conv1", "body.layer1")) for n in frozen) and frozen
    # caffe2 style: stride in the first 1x1 conv; FrozenBN without eps
    assert m.body.layer2[0].conv1.stride == (2, 2) and m.body.layer2[0].conv2.stride == (1, 1)
    assert m.body.bn1.eps == 0.0
    assert m.head.cls_logits.bias[0].item() == pytest.approx(-4.59512, abs=1e-4)


LOSS_KEYS = {
    "atss": {"loss_cls", "loss_reg", "loss_centerness"},
    "dynamic_atss": {"loss_cls", "loss_reg", "loss_iou"},
    "paa": {"loss_cls", "loss_reg", "loss_iou"},
}


@pytest.mark.parametrize("arch", sorted(LOSS_KEYS))
@pytest.mark.parametrize("num_gt", [0, 1, 2])
def test_losses_finite_and_backward(num_gt, arch):
    m = tiny(arch)
    m.train()
    imgs, targets = images_and_targets()
    targets = [{"boxes": t["boxes"][:num_gt], "labels": t["labels"][:num_gt]} for t in targets]
    losses = m(imgs, targets)
    assert set(losses) == LOSS_KEYS[arch]
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if num_gt == 0:
        assert all(v.item() == 0 for k, v in losses.items() if k != "loss_cls")


def test_predict_format_and_input_types():
    m = tiny(overrides=["model.score_thresh=0.0"]).eval()  # untrained: every p is ~0.01
    imgs, _ = images_and_targets()
    with torch.no_grad():
        out_u8 = m(imgs)
        out_f = m([i.float() / 255 for i in imgs])
    assert len(out_u8) == 2
    for d, img in zip(out_u8, imgs):
        assert set(d) == {"boxes", "scores", "labels"}
        assert d["boxes"].shape[1] == 4 and d["labels"].dtype == torch.int64
        assert len(d["boxes"]) <= 100
        if len(d["boxes"]):
            h, w = img.shape[-2:]
            assert d["boxes"][:, 2].max() <= w and d["boxes"][:, 3].max() <= h  # original pixels
            assert (d["scores"][:-1] >= d["scores"][1:]).all()
    # same pixels as uint8 or float: same detections (the resize path differs: allow small change)
    assert len(out_u8[0]["boxes"]) > 0
    torch.testing.assert_close(out_u8[0]["scores"][:5], out_f[0]["scores"][:5], atol=2e-2, rtol=0)


def test_bad_targets_name_the_image():
    m = tiny().train()
    imgs, targets = images_and_targets()
    bad = [dict(targets[0]), dict(targets[1], boxes=torch.tensor([[10.0, 10.0, 5.0, 60.0]]), image_id=42)]
    with pytest.raises(TargetError, match="image 42"):
        m(imgs, bad)
    bad = [dict(targets[0]), dict(targets[1], labels=torch.tensor([7]))]
    with pytest.raises(TargetError, match="labels"):
        m(imgs, bad)
    with pytest.raises(ValueError, match="targets"):
        m(imgs)


@pytest.mark.parametrize("arch", sorted(LOSS_KEYS))
def test_overfit_one_batch(arch):
    m = tiny(arch, overrides=["model.head_convs=2"])
    m.train()
    imgs, targets = images_and_targets()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    first = None
    for _ in range(40):
        loss = sum(m(imgs, targets).values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first


def test_backbone_weights_from_local_file(tmp_path):
    from safetensors.torch import save_file

    from assigndet.nn import ResNetBody

    src = ResNetBody(depth=18, base_width=8, norm="gn", freeze_at=0)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 64)  # a classifier in the file is ignored
    path = tmp_path / "r18.safetensors"
    save_file(state, str(path))
    m = tiny(overrides=[f"model.backbone.weights={path}"])
    for k, v in src.state_dict().items():
        assert torch.equal(m.body.state_dict()[k], v), k
    with pytest.raises(ValueError, match="neither a file nor one of"):
        tiny(overrides=["model.backbone.weights=NO_SUCH_WEIGHTS"])


@pytest.mark.parametrize("num_gt", [0, 2])
def test_paa_mmdet_variant_trains(num_gt):
    """mmdetection's PAA (step A, 1.3-weighted anchor scores, cut, cls / max(#pos, #images))."""
    m = tiny("paa", ["model.paa_variant=mmdet", "model.loss_normalizer=local", "model.offset=0.0"]).train()
    imgs, targets = images_and_targets()
    targets = [{"boxes": t["boxes"][:num_gt], "labels": t["labels"][:num_gt]} for t in targets]
    losses = m(imgs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    if num_gt == 0:  # no positive: the focal sum is divided by the 2 images, not clamped to 1
        l2 = tiny("paa", ["model.offset=0.0"]).train()(imgs, targets)  # same weights (seed 0)
        torch.testing.assert_close(losses["loss_cls"] * 2, l2["loss_cls"])
