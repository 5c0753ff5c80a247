"""mmdetection's ATSS / PAA ports (SPEC §6, §7.2): checkpoint layout, conventions and inference rules."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

import assigndet
from assigndet.boxes import BoxCoder
from assigndet.checkpoints import CheckpointError
from assigndet.postprocess import mmdet_postprocess


def mmdet_state(seed: int = 0, num_classes: int = 80) -> dict[str, torch.Tensor]:
    """An mmdetection ATSS/PAA R-50-FPN state dict (SPEC §7.2), arbitrary values."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in torchvision.models.resnet50().state_dict().items():  # torchvision names under backbone.*
        if k.startswith("fc."):
            continue
        if k.endswith("num_batches_tracked"):
            sd["backbone." + k] = torch.tensor(0)
        elif k.endswith("running_var"):
            sd["backbone." + k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("weight") and v.dim() == 1:
            sd["backbone." + k] = torch.rand(v.shape, generator=g) * 0.5 + 0.25
        else:
            sd["backbone." + k] = torch.randn(v.shape, generator=g) * (0.05 if v.dim() == 1 else 1 / math.sqrt(v[0].numel()))
    for i, c in enumerate((512, 1024, 2048)):
        sd[f"neck.lateral_convs.{i}.conv.weight"] = torch.randn(256, c, 1, 1, generator=g) / math.sqrt(c)
        sd[f"neck.lateral_convs.{i}.conv.bias"] = torch.randn(256, generator=g) * 0.05
    for i in range(5):
        sd[f"neck.fpn_convs.{i}.conv.weight"] = torch.randn(256, 256, 3, 3, generator=g) / 48
        sd[f"neck.fpn_convs.{i}.conv.bias"] = torch.randn(256, generator=g) * 0.05
    for t in ("cls", "reg"):
        for i in range(4):
            sd[f"bbox_head.{t}_convs.{i}.conv.weight"] = torch.randn(256, 256, 3, 3, generator=g) / 48
            sd[f"bbox_head.{t}_convs.{i}.gn.weight"] = torch.rand(256, generator=g) + 0.5
            sd[f"bbox_head.{t}_convs.{i}.gn.bias"] = torch.randn(256, generator=g) * 0.05
    for name, k in (("atss_cls", num_classes), ("atss_reg", 4), ("atss_centerness", 1)):
        sd[f"bbox_head.{name}.weight"] = torch.randn(k, 256, 3, 3, generator=g) * 0.01
        sd[f"bbox_head.{name}.bias"] = torch.randn(k, generator=g) * 0.1 - (2.0 if name == "atss_cls" else 0.0)
    for level in range(5):
        sd[f"bbox_head.scales.{level}.scale"] = torch.tensor(1.0 + 0.1 * level)  # 0-dim
    return sd


@pytest.fixture(scope="module")
def mmdet_ckpt(tmp_path_factory):
    state = mmdet_state()
    path = tmp_path_factory.mktemp("mmdet") / "atss_r50_fpn_1x_coco.pth"
    torch.save({"meta": {"epoch": 12}, "state_dict": state}, path)
    return path, state


def test_mmdet_checkpoint_maps_and_loads(mmdet_ckpt):
    path, state = mmdet_ckpt
    for preset in ("atss_R_50_FPN_1x_mmdet", "paa_R_50_FPN_1x_mmdet"):
        m = assigndet.build_detector(preset, weights=str(path), overrides=["model.input.min_size_test=64"])
        own = m.state_dict()
        assert torch.equal(own["body.layer2.0.conv2.weight"], state["backbone.layer2.0.conv2.weight"])
        assert torch.equal(own["body.bn1.running_var"], state["backbone.bn1.running_var"])
        assert torch.equal(own["fpn.fpn.inner_blocks.1.0.weight"], state["neck.lateral_convs.1.conv.weight"])
        assert torch.equal(own["fpn.fpn.layer_blocks.2.0.bias"], state["neck.fpn_convs.2.conv.bias"])
        assert torch.equal(own["fpn.fpn.extra_blocks.p6.weight"], state["neck.fpn_convs.3.conv.weight"])
        assert torch.equal(own["fpn.fpn.extra_blocks.p7.bias"], state["neck.fpn_convs.4.conv.bias"])
        assert torch.equal(own["head.cls_tower.6.weight"], state["bbox_head.cls_convs.2.conv.weight"])
        assert torch.equal(own["head.bbox_tower.10.bias"], state["bbox_head.reg_convs.3.gn.bias"])
        assert torch.equal(own["head.cls_logits.bias"], state["bbox_head.atss_cls.bias"])
        assert torch.equal(own["head.quality.weight"], state["bbox_head.atss_centerness.weight"])
        assert own["head.scales.4.scale"].shape == (1,) and own["head.scales.4.scale"].item() == pytest.approx(1.4)
        # the torchvision-style backbone with frozen BN (eps 1e-5) is torchvision's ResNet-50 in eval mode
        tv = torchvision.models.resnet50()
        tv.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")},
                           strict=False)
        tv.eval()
        x = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
            torch.testing.assert_close(m.body(x)[3], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
            out = m.eval()([torch.randint(0, 255, (3, 60, 90), dtype=torch.uint8)])[0]
        assert set(out) == {"boxes", "scores", "labels"}


def test_mmdet_conventions():
    m = assigndet.build_detector("atss_R_50_FPN_1x_mmdet")
    assert m.anchor_generator.cells()[0].tolist() == [[-32.0, -32.0, 32.0, 32.0]]  # centre 0, width 8s exactly
    assert m.head.cls_tower[0].bias is None and m.head.bbox_tower[3].bias is None  # bias-free tower convs
    assert type(m.fpn.fpn.extra_blocks).__name__ == "P6P7NoReLU"
    assert m.coder.symmetric_clamp and m.coder.offset == 0.0 and m.offset == 0.0
    assert m.body.bn1.eps == 1e-5 and m.body.layer2[0].conv2.stride == (2, 2)  # pytorch style
    t = m.transform
    assert not t.to_bgr255 and t.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    assert t.pixel_std.flatten().tolist() == pytest.approx([58.395, 57.12, 57.375]) and t.resize_rule == "mmdet"
    assert not any(p.requires_grad for n, p in m.named_parameters() if n.startswith(("body.conv1", "body.layer1")))
    d = BoxCoder(offset=0.0, symmetric_clamp=True).decode(torch.tensor([[0.0, 0.0, -50.0, 50.0]]),
                                                          torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    w, h = d[0, 2] - d[0, 0], d[0, 3] - d[0, 1]
    assert float(w) == pytest.approx(16 * 16 / 1000, rel=1e-5) and float(h) == pytest.approx(16 * 1000 / 16, rel=1e-5)


def test_layout_and_preset_must_agree(mmdet_ckpt, tmp_path):
    path, state = mmdet_ckpt
    with pytest.raises(CheckpointError, match="_mmdet preset"):
        assigndet.build_detector("atss_R_50_FPN_1x", weights=str(path))
    bad = dict(state)
    bad["bbox_head.atss_cls.weight"] = torch.zeros(7, 256, 3, 3)
    bad["bbox_head.atss_cls.bias"] = torch.zeros(7)
    p = tmp_path / "seven.pth"
    torch.save({"state_dict": bad}, p)
    with pytest.raises(CheckpointError, match=r"7 classes.*head\.cls_logits\.weight"):
        assigndet.build_detector("atss_R_50_FPN_1x_mmdet", weights=str(p))


# -------------------------------------------------------------------- inference rules (SPEC §6)
def _iou0(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _decode0(d, a, clip):
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    cx, cy = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
    dw, dh = np.clip(d[:, 2] * 0.2, -clip, clip), np.clip(d[:, 3] * 0.2, -clip, clip)
    px, py = cx + d[:, 0] * 0.1 * w, cy + d[:, 1] * 0.1 * h
    pw, ph = w * np.exp(dw), h * np.exp(dh)
    return np.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], 1)


def _nms(B, S, L, thr):
    keep = []
    for c in np.unique(L):
        idx = np.nonzero(L == c)[0]
        idx = idx[np.argsort(-S[idx], kind="stable")]
        alive = np.ones(len(idx), bool)
        ious = _iou0(B[idx], B[idx])
        for i in range(len(idx)):
            if alive[i]:
                keep.append(idx[i])
                alive &= ~(ious[i] > thr)
    return np.array(sorted(keep, key=lambda i: -S[i]), dtype=np.int64)


def reference_mmdet(method, logits, deltas, quality, anchors, npl, size, orig, *, thr=0.05, nms_pre=1000,
                    nms=0.6, max_per_img=100, voting=False):
    p_all = 1 / (1 + np.exp(-logits.double().numpy()))
    q_all = 1 / (1 + np.exp(-quality.double().numpy()))
    D, A = deltas.double().numpy(), anchors.double().numpy()
    h, w = size
    scale = np.array([w / orig[1], h / orig[0], w / orig[1], h / orig[0]])
    clip = abs(math.log(16 / 1000))
    boxes, scores, labels, pq_rows = [], [], [], []
    start = 0
    for n in npl:
        p, q = p_all[start:start + n], q_all[start:start + n]
        if method == "atss":
            a, c = np.nonzero(p > thr)
            v = p[a, c]
            order = np.argsort(-v, kind="stable")[:nms_pre]
            a, c, v = a[order], c[order], v[order]
            boxes.append(_decode0(D[start + a], A[start + a], clip))
            scores.append(v * q[a])
            labels.append(c)
        else:
            best = np.sqrt(p * q[:, None]).max(1)
            a = np.argsort(-best, kind="stable")[:nms_pre] if nms_pre < n else np.arange(n)
            boxes.append(_decode0(D[start + a], A[start + a], clip))
            pq_rows.append(np.sqrt(p[a] * q[a, None]))
        start += n
    B = np.concatenate(boxes)
    B[:, 0::2] = B[:, 0::2].clip(0, w)
    B[:, 1::2] = B[:, 1::2].clip(0, h)
    B = B / scale
    if method == "atss":
        S, L = np.concatenate(scores), np.concatenate(labels)
        ok = (B[:, 2] - B[:, 0] > 0) & (B[:, 3] - B[:, 1] > 0)
        B, S, L = B[ok], S[ok], L[ok]
        keep = _nms(B, S, L, nms)[:max_per_img]
        return B[keep], S[keep], L[keep]
    PQ = np.concatenate(pq_rows)
    r, c = np.nonzero(PQ > thr)
    CB, CS, CL = B[r], PQ[r, c], c
    keep = _nms(CB, CS, CL, nms)[:max_per_img]
    out = CB[keep].copy()
    if voting:
        for n_, i in enumerate(keep):
            same = CL == CL[i]
            ious = _iou0(CB[i:i + 1], CB[same])[0]
            m = ious > 0.01
            wts = np.exp(-((1 - ious[m]) ** 2) / 0.025) * CS[same][m]
            out[n_] = (wts[:, None] * CB[same][m]).sum(0) / wts.sum()
    return out, CS[keep], CL[keep]


@pytest.mark.parametrize("method,voting", [("atss", False), ("paa", False), ("paa", True)])
def test_mmdet_postprocess_matches_the_rules(method, voting):
    g = torch.Generator().manual_seed(3)
    size, orig = (96, 128), (75, 101)
    npl = [12 * 16, 6 * 8]
    anchors = []
    for (hh, ww), s in zip(((12, 16), (6, 8)), (8, 16)):
        ys, xs = torch.meshgrid(torch.arange(hh) * s, torch.arange(ww) * s, indexing="ij")
        c = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 4).float()
        anchors.append(c + torch.tensor([-4.0, -4.0, 4.0, 4.0]) * s)
    anchors = torch.cat(anchors)
    C = 5
    logits = torch.randn(sum(npl), C, generator=g) * 1.5 - 2.5
    deltas = torch.randn(sum(npl), 4, generator=g) * 0.5
    deltas[:3, 2] = -30.0  # exercises the symmetric clamp and the w > 0 filter
    quality = torch.randn(sum(npl), generator=g)
    coder = BoxCoder(offset=0.0, symmetric_clamp=True)
    out = mmdet_postprocess(logits, deltas, quality, anchors, npl, size, orig, coder, method=method,
                            pre_nms_top_n=60, detections_per_img=40, score_voting=voting)
    B, S, L = reference_mmdet(method, logits, deltas, quality, anchors, npl, size, orig, nms_pre=60,
                              max_per_img=40, voting=voting)
    assert len(S) > 20 and len(out["scores"]) == len(S)
    order = np.lexsort((B[:, 0], L, -S))
    ours = torch.from_numpy(np.lexsort((out["boxes"][:, 0].numpy(), out["labels"].numpy(), -out["scores"].numpy())))
    torch.testing.assert_close(out["scores"][ours].double(), torch.from_numpy(S[order]), atol=1e-6, rtol=0)
    assert out["labels"][ours].tolist() == L[order].tolist()
    torch.testing.assert_close(out["boxes"][ours].double(), torch.from_numpy(B[order]), atol=1e-3, rtol=0)


def _mmdet_transform():
    from assigndet.nn.transform import ImageTransform

    return ImageTransform(min_size_train=[800], max_size_train=1333, min_size_test=800, max_size_test=1333,
                          to_bgr255=False, pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0],
                          resize_rule="mmdet").eval()


def test_mmdet_test_resize_is_opencv_bilinear():
    """The *_mmdet presets resize uint8 test images with cv2.resize(INTER_LINEAR), as mmcv's imrescale
    (torchvision's bilinear differs by one grey level in many pixels)."""
    cv2 = pytest.importorskip("cv2")
    from torchvision.transforms.v2 import functional as TF

    img = torch.randint(0, 256, (3, 427, 640), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch, sizes, _ = _mmdet_transform()([img])
    assert sizes == [(800, 1199)]  # mmcv rescale_size: int(side * 800 / 427 + 0.5)
    ref = cv2.resize(img.permute(1, 2, 0).numpy(), (1199, 800), interpolation=cv2.INTER_LINEAR)
    assert torch.equal(batch[0, :, :800, :1199], torch.from_numpy(ref).permute(2, 0, 1).float())
    approx = TF.resize(img, [800, 1199], antialias=False).float()
    assert not torch.equal(approx, batch[0, :, :800, :1199])  # the fallback is not byte-exact


def test_mmdet_resize_without_opencv_warns_and_approximates(monkeypatch):
    from assigndet.nn import transform as T

    monkeypatch.setattr(T, "opencv_available", lambda: False)
    monkeypatch.setattr(T, "_warned_no_opencv", False)
    img = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    t = _mmdet_transform()
    with pytest.warns(UserWarning, match="assigndet\\[mmdet\\]"):
        batch, sizes, _ = t([img])
    h, w = sizes[0]
    from torchvision.transforms.v2 import functional as TF

    assert torch.equal(batch[0, :, :h, :w], TF.resize(img, [h, w], antialias=False).float())
