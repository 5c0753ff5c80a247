"""Fidelity of released checkpoints (issue 6 "done when", SPEC §1, §2.1, §3.1, §3.4, §7).

A checkpoint in the maskrcnn-benchmark layout is written from the key list of SPEC §7.1 (not from
our model), filled with seeded arbitrary values and the SPEC's cell anchors, loaded through
``build_detector(..., weights=...)``, and every stage is compared with a reference written here
from the SPEC alone: a functional caffe2 R-50 (stride in the 1x1 conv, FrozenBN without eps) on
the original key names, the FPN of §1.4, the head of §2.1 / §3.1, PIL's resize + BGR·255 − mean +
padding to 32, the anchor grid, +1 decoding and clipping, the 0.05 threshold, per-level top 1000,
class-wise +1 NMS at 0.6, the k-th-value top 100 and PAA's score voting.

Sizes are kept small (``min_size_test=160``) so that R-50 forward passes stay cheap; the resize
rule and every other stage are the same code path as at 800/1333.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import assigndet

CAFFE2_MEAN = [102.9801, 115.9465, 122.7717]
#: SPEC §1.5 / §11: the maskrcnn-benchmark cell anchors of P3..P7
CELL_ANCHORS = [[-27.5, -27.5, 35.5, 35.5], [-55.5, -55.5, 71.5, 71.5], [-111.5, -111.5, 143.5, 143.5],
                [-223.5, -223.5, 287.5, 287.5], [-447.5, -447.5, 575.5, 575.5]]
STRIDES = [8, 16, 32, 64, 128]
SMALL = ["model.input.min_size_test=160", "model.input.max_size_test=256"]
NUM_CLASSES = 80


# =================================================================== the original checkpoint
def original_shapes(quality: str, num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a maskrcnn-benchmark ATSS/PAA R-50-FPN state dict, from SPEC §7.1."""
    sd: dict[str, tuple[int, ...]] = {}

    def frozen_bn(prefix: str, c: int) -> None:
        for n in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{prefix}.{n}"] = (c,)

    sd["backbone.body.stem.conv1.weight"] = (64, 3, 7, 7)
    frozen_bn("backbone.body.stem.bn1", 64)
    cin = 64
    for layer, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], 1):
        out = 4 * width
        for b in range(blocks):
            p = f"backbone.body.layer{layer}.{b}"
            sd[f"{p}.conv1.weight"] = (width, cin, 1, 1)
            frozen_bn(f"{p}.bn1", width)
            sd[f"{p}.conv2.weight"] = (width, width, 3, 3)
            frozen_bn(f"{p}.bn2", width)
            sd[f"{p}.conv3.weight"] = (out, width, 1, 1)
            frozen_bn(f"{p}.bn3", out)
            if b == 0:
                sd[f"{p}.downsample.0.weight"] = (out, cin, 1, 1)
                frozen_bn(f"{p}.downsample.1", out)
            cin = out
    for i, c in zip((2, 3, 4), (512, 1024, 2048)):
        sd[f"backbone.fpn.fpn_inner{i}.weight"] = (256, c, 1, 1)
        sd[f"backbone.fpn.fpn_inner{i}.bias"] = (256,)
        sd[f"backbone.fpn.fpn_layer{i}.weight"] = (256, 256, 3, 3)
        sd[f"backbone.fpn.fpn_layer{i}.bias"] = (256,)
    for p in ("p6", "p7"):
        sd[f"backbone.fpn.top_blocks.{p}.weight"] = (256, 256, 3, 3)
        sd[f"backbone.fpn.top_blocks.{p}.bias"] = (256,)
    for tower in ("cls_tower", "bbox_tower"):
        for i in (0, 3, 6, 9):
            sd[f"rpn.head.{tower}.{i}.weight"] = (256, 256, 3, 3)
            sd[f"rpn.head.{tower}.{i}.bias"] = (256,)
        for i in (1, 4, 7, 10):
            sd[f"rpn.head.{tower}.{i}.weight"] = (256,)
            sd[f"rpn.head.{tower}.{i}.bias"] = (256,)
    for name, k in (("cls_logits", num_classes), ("bbox_pred", 4), (quality, 1)):
        sd[f"rpn.head.{name}.weight"] = (k, 256, 3, 3)
        sd[f"rpn.head.{name}.bias"] = (k,)
    for level in range(5):
        sd[f"rpn.head.scales.{level}.scale"] = (1,)
        sd[f"rpn.anchor_generator.cell_anchors.{level}"] = (1, 4)
    return sd


def original_state(quality: str, seed: int = 0, num_classes: int = NUM_CLASSES) -> dict[str, torch.Tensor]:
    """Arbitrary (seeded) values of a sane scale; FrozenBN variances are small (~1e-3) so that an
    epsilon of 1e-5 would change every activation measurably."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in original_shapes(quality, num_classes).items():
        if key.startswith("rpn.anchor_generator.cell_anchors."):
            state[key] = torch.tensor([CELL_ANCHORS[int(key.rsplit(".", 1)[1])]])
            continue
        if key.endswith("running_var"):
            t = torch.rand(shape, generator=g) * 2e-3 + 5e-4
        elif key.endswith("running_mean"):
            t = torch.randn(shape, generator=g) * 0.05
        elif ".bn" in key or "downsample.1" in key:
            var_key = key.rsplit(".", 1)[0] + ".running_var"
            if key.endswith(".weight"):  # gamma = g * sqrt(var): x * gamma / sqrt(var) = g x
                gain = 0.1 if ".bn3" in key else 0.5
                t = (torch.rand(shape, generator=g) * 0.5 + 0.5) * gain
                state[key] = t  # scaled below, once the variance exists
                continue
            t = torch.randn(shape, generator=g) * 0.05
        elif key.startswith("rpn.head.scales."):
            t = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            std = 1.0 / math.sqrt(fan_in)
            if ".cls_logits." in key or f".{quality}." in key:
                std = 0.02
            elif ".bbox_pred." in key:
                std = 0.005
            t = torch.randn(shape, generator=g) * std
        elif key.endswith(".bias") and ".cls_logits." in key:
            t = torch.rand(shape, generator=g) * 2.0 - 3.5
        elif key.startswith("rpn.head.") and (".1." in key or ".4." in key or ".7." in key or ".10." in key) \
                and key.endswith(".weight"):
            t = torch.rand(shape, generator=g) * 0.5 + 0.75  # GroupNorm gamma
        else:
            t = torch.randn(shape, generator=g) * 0.05
        state[key] = t
    for key in list(state):
        if key.endswith("running_var"):
            prefix = key.rsplit(".", 1)[0]
            state[prefix + ".weight"] = state[prefix + ".weight"] * state[key].sqrt()
    return state


def save_original(path, state: dict, layout: str = "module") -> None:
    if layout == "module":
        obj = {"model": {f"module.{k}": v for k, v in state.items()}, "iteration": 90000}
    elif layout == "model":
        obj = {"model": dict(state), "iteration": 90000}
    else:
        obj = dict(state)
    torch.save(obj, path)


# ======================================================================== SPEC-derived reference
def ref_preprocess(image_u8: torch.Tensor, min_size: int, max_size: int):
    """SPEC §1.2 on a uint8 (3, H, W) image: resize rule, PIL bilinear, ToTensor, BGR·255 − mean,
    pad with zeros to a multiple of 32 (batch of one). -> (batch, (h, w) resized)."""
    h, w = image_u8.shape[-2:]
    size = min_size
    short, long = min(w, h), max(w, h)
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        oh, ow = h, w
    elif w < h:
        ow, oh = size, int(size * h / w)
    else:
        oh, ow = size, int(size * w / h)
    pil = Image.fromarray(image_u8.permute(1, 2, 0).numpy())
    if (oh, ow) != (h, w):
        pil = pil.resize((ow, oh), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255  # ToTensor
    x = x[[2, 1, 0]] * 255 - torch.tensor(CAFFE2_MEAN).view(3, 1, 1)
    H, W = math.ceil(oh / 32) * 32, math.ceil(ow / 32) * 32
    batch = torch.zeros(1, 3, H, W)
    batch[0, :, :oh, :ow] = x
    return batch, (oh, ow)


def _fbn(x, s, p):
    scale = s[p + ".weight"] * s[p + ".running_var"].rsqrt()  # no epsilon
    bias = s[p + ".bias"] - s[p + ".running_mean"] * scale
    return x * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def ref_backbone(s: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """MSRA R-50: stem, then bottlenecks with the stride of layer2..4[0] in the first 1x1 conv."""
    p = "backbone.body."
    x = F.relu(_fbn(F.conv2d(x, s[p + "stem.conv1.weight"], stride=2, padding=3), s, p + "stem.bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    feats = []
    for layer, blocks in enumerate((3, 4, 6, 3), 1):
        for b in range(blocks):
            q = f"{p}layer{layer}.{b}."
            stride = 2 if (b == 0 and layer > 1) else 1
            y = F.relu(_fbn(F.conv2d(x, s[q + "conv1.weight"], stride=stride), s, q + "bn1"))
            y = F.relu(_fbn(F.conv2d(y, s[q + "conv2.weight"], padding=1), s, q + "bn2"))
            y = _fbn(F.conv2d(y, s[q + "conv3.weight"]), s, q + "bn3")
            idt = _fbn(F.conv2d(x, s[q + "downsample.0.weight"], stride=stride), s, q + "downsample.1") if b == 0 else x
            x = F.relu(y + idt)
        feats.append(x)
    return feats  # C2..C5


def ref_fpn(s: dict, c: list[torch.Tensor]) -> list[torch.Tensor]:
    """C3, C4, C5 -> P3..P7."""
    p = "backbone.fpn."
    c = [None] + list(c)  # index by the stage number - 2

    def conv(x, name, **kw):
        return F.conv2d(x, s[p + name + ".weight"], s[p + name + ".bias"], **kw)

    last = conv(c[3], "fpn_inner4")
    outs = [conv(last, "fpn_layer4", padding=1)]
    for feat, i in ((c[2], 3), (c[1], 2)):
        lat = conv(feat, f"fpn_inner{i}")
        last = lat + F.interpolate(last, size=lat.shape[-2:], mode="nearest")
        outs.insert(0, conv(last, f"fpn_layer{i}", padding=1))
    p6 = conv(outs[-1], "top_blocks.p6", stride=2, padding=1)
    p7 = conv(F.relu(p6), "top_blocks.p7", stride=2, padding=1)
    return outs + [p6, p7]


def ref_head(s: dict, feats: list[torch.Tensor], quality: str):
    p = "rpn.head."
    out = []
    for level, f in enumerate(feats):
        towers = {}
        for t in ("cls_tower", "bbox_tower"):
            x = f
            for i in (0, 3, 6, 9):
                x = F.conv2d(x, s[f"{p}{t}.{i}.weight"], s[f"{p}{t}.{i}.bias"], padding=1)
                x = F.relu(F.group_norm(x, 32, s[f"{p}{t}.{i + 1}.weight"], s[f"{p}{t}.{i + 1}.bias"], eps=1e-5))
            towers[t] = x
        cls = F.conv2d(towers["cls_tower"], s[p + "cls_logits.weight"], s[p + "cls_logits.bias"], padding=1)
        box = F.conv2d(towers["bbox_tower"], s[p + "bbox_pred.weight"], s[p + "bbox_pred.bias"], padding=1)
        box = box * s[f"{p}scales.{level}.scale"]
        q = F.conv2d(towers["bbox_tower"], s[f"{p}{quality}.weight"], s[f"{p}{quality}.bias"], padding=1)
        out.append((cls[0], box[0], q[0]))  # (C, H, W), (4, H, W), (1, H, W)
    return out


def ref_anchors(s: dict, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """The stored cell anchors shifted over each padded feature map, row-major."""
    out = []
    for level, f in enumerate(feats):
        h, w = f.shape[-2:]
        cell = s[f"rpn.anchor_generator.cell_anchors.{level}"][0]
        ys, xs = torch.meshgrid(torch.arange(h) * STRIDES[level], torch.arange(w) * STRIDES[level], indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 4).float()
        out.append(shifts + cell)
    return out


def ref_decode(d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    wa, ha = a[:, 2] - a[:, 0] + 1, a[:, 3] - a[:, 1] + 1
    cxa, cya = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
    dw = torch.clamp(d[:, 2] / 5, max=math.log(1000 / 16))
    dh = torch.clamp(d[:, 3] / 5, max=math.log(1000 / 16))
    cx, cy = d[:, 0] / 10 * wa + cxa, d[:, 1] / 10 * ha + cya
    w, h = torch.exp(dw) * wa, torch.exp(dh) * ha
    return torch.stack([cx - (w - 1) / 2, cy - (h - 1) / 2, cx + (w - 1) / 2, cy + (h - 1) / 2], dim=1)


def iou_plus1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) IoU with inclusive pixels, float64."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1, 0, None)
    inter = iw * ih
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def ref_postprocess(head, anchors, size, *, paa: bool):
    """SPEC §1.9 (+ §3.4 score voting for PAA), one image, in resized-image pixels."""
    boxes_l, scores_l, labels_l = [], [], []
    for (cls, box, q), anc in zip(head, anchors):
        C = cls.shape[0]
        p = cls.sigmoid().permute(1, 2, 0).reshape(-1, C)  # (HW, C): A = 1
        qq = q.sigmoid().reshape(-1)
        d = box.permute(1, 2, 0).reshape(-1, 4)
        cand = p > 0.05
        rank = p * qq[:, None]
        if paa:
            rank = rank.sqrt()
        pairs = torch.nonzero(cand)
        k = min(1000, len(pairs))
        top = rank[cand].topk(k).indices
        a_idx, c_idx = pairs[top, 0], pairs[top, 1]
        boxes_l.append(ref_decode(d[a_idx], anc[a_idx]))
        scores_l.append((p[a_idx, c_idx] * qq[a_idx]).sqrt())
        labels_l.append(c_idx)
    boxes, scores, labels = torch.cat(boxes_l), torch.cat(scores_l), torch.cat(labels_l)
    h, w = size
    boxes = torch.stack([boxes[:, 0].clamp(0, w - 1), boxes[:, 1].clamp(0, h - 1),
                         boxes[:, 2].clamp(0, w - 1), boxes[:, 3].clamp(0, h - 1)], dim=1)
    B, S, L = boxes.double().numpy(), scores.double().numpy(), labels.numpy()
    keep = []
    for c in np.unique(L):  # greedy class-wise NMS, suppress IoU+1 > 0.6
        idx = np.nonzero(L == c)[0]
        idx = idx[np.argsort(-S[idx], kind="stable")]
        alive = np.ones(len(idx), bool)
        ious = iou_plus1(B[idx], B[idx])
        for i in range(len(idx)):
            if alive[i]:
                keep.append(idx[i])
                alive &= ~(ious[i] > 0.6)
                alive[i] = False
    keep = np.array(sorted(keep, key=lambda i: -S[i]), dtype=np.int64)
    if len(keep) > 100:  # k-th-value rule
        thresh = np.sort(S[keep])[::-1][99]
        keep = keep[S[keep] >= thresh]
    out_boxes = B[keep].copy()
    if paa:  # score voting with all pre-NMS candidates of the same class
        for n, i in enumerate(keep):
            same = L == L[i]
            ious = iou_plus1(B[i : i + 1], B[same])[0]
            vote = ious > 0.01
            wts = np.exp(-((1 - ious[vote]) ** 2) / 0.025) * S[same][vote]
            out_boxes[n] = (wts[:, None] * B[same][vote]).sum(0) / wts.sum()
    return (torch.from_numpy(out_boxes).float(), torch.from_numpy(S[keep]).float(), torch.from_numpy(L[keep]),
            torch.from_numpy(B[keep]).float())


def ref_detect(state: dict, image_u8: torch.Tensor, *, quality: str, paa: bool, min_size=160, max_size=256):
    batch, size = ref_preprocess(image_u8, min_size, max_size)
    with torch.no_grad():
        feats = ref_fpn(state, ref_backbone(state, batch)[1:])
        head = ref_head(state, feats, quality)
    boxes, scores, labels, nms_boxes = ref_postprocess(head, ref_anchors(state, feats), size, paa=paa)
    h, w = image_u8.shape[-2:]
    ratio = torch.tensor([w / size[1], h / size[0], w / size[1], h / size[0]])
    return {"boxes": boxes * ratio, "scores": scores, "labels": labels, "nms_boxes": nms_boxes * ratio}, batch, \
        feats, head


def assert_same_detections(ours: dict, ref: dict, *, box_tol=0.01, score_tol=2e-5) -> None:
    """Same set of detections: equal count; each reference detection matched by one of ours of the
    same label with |Δscore| <= score_tol and every |Δcoordinate| <= box_tol."""
    assert len(ours["scores"]) == len(ref["scores"]), (len(ours["scores"]), len(ref["scores"]))
    assert ours["labels"].dtype == torch.int64
    used = torch.zeros(len(ours["scores"]), dtype=torch.bool)
    for b, s, lab in zip(ref["boxes"], ref["scores"], ref["labels"]):
        ok = (~used) & (ours["labels"] == lab) & ((ours["scores"] - s).abs() <= score_tol) \
            & ((ours["boxes"] - b).abs().amax(dim=1) <= box_tol)
        assert ok.any(), f"no match for reference detection {b.tolist()} {float(s)} {int(lab)}"
        used[torch.nonzero(ok)[0, 0]] = True


def test_checkpoint_key_list_matches_spec():
    s = original_shapes("centerness")
    assert len(s) == 329  # SPEC §7.1: 329 entries for ATSS R-50
    n = sum(math.prod(v) for k, v in s.items() if "running_" not in k and "cell_anchors" not in k
            and not (k.startswith("backbone.body") and (".bn" in k or "downsample.1" in k)))
    assert abs(n - 32.24e6) < 0.01e6  # ~32.24 M values in conv / GN / Scale tensors


@pytest.fixture(scope="module")
def atss_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("atss")
    state = original_state("centerness", seed=1)
    path = d / "atss_R_50_FPN_1x.pth"
    save_original(path, state, "module")
    return path, state


@pytest.fixture(scope="module")
def atss_model(atss_ckpt):
    """The ATSS checkpoint loaded once (at the small test size)."""
    return assigndet.build_detector("atss_R_50_FPN_1x", weights=str(atss_ckpt[0]), overrides=SMALL).eval()


@pytest.fixture(scope="module")
def paa_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("paa")
    state = original_state("iou_pred", seed=2)
    path = d / "paa_R_50_FPN_1x.pth"
    save_original(path, state, "module")
    return path, state


def _image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    # smooth random image (bilinear resampling of a coarse grid) + noise: realistic enough
    coarse = torch.rand(1, 3, 6, 8, generator=g) * 255
    img = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    img = img + torch.randn(3, h, w, generator=g) * 20
    return img.clamp(0, 255).round().to(torch.uint8)


def test_every_key_maps_and_loads(atss_ckpt, atss_model):
    path, state = atss_ckpt
    model = atss_model
    own = model.state_dict()
    assert len(own) == len(state) - 5  # 329 - 5 anchor buffers (compared, not loaded)
    # every value landed exactly once: the multiset of tensors is identical
    own_sums = sorted(float(v.double().sum()) + 1e3 * v.numel() for v in own.values())
    file_sums = sorted(float(v.double().sum()) + 1e3 * v.numel() for k, v in state.items() if "cell_anchors" not in k)
    assert own_sums == pytest.approx(file_sums, rel=1e-12, abs=1e-9)
    # the names of SPEC §7.1 go where they belong
    pairs = {
        "backbone.body.stem.conv1.weight": "body.conv1.weight",
        "backbone.body.stem.bn1.running_var": "body.bn1.running_var",
        "backbone.body.layer3.5.conv2.weight": "body.layer3.5.conv2.weight",
        "backbone.body.layer4.0.downsample.1.bias": "body.layer4.0.downsample.1.bias",
        "backbone.fpn.fpn_inner2.weight": "fpn.fpn.inner_blocks.0.0.weight",
        "backbone.fpn.fpn_inner4.bias": "fpn.fpn.inner_blocks.2.0.bias",
        "backbone.fpn.fpn_layer3.weight": "fpn.fpn.layer_blocks.1.0.weight",
        "backbone.fpn.top_blocks.p7.weight": "fpn.fpn.extra_blocks.p7.weight",
        "rpn.head.cls_tower.10.weight": "head.cls_tower.10.weight",
        "rpn.head.bbox_tower.9.bias": "head.bbox_tower.9.bias",
        "rpn.head.centerness.weight": "head.quality.weight",
        "rpn.head.scales.3.scale": "head.scales.3.scale",
    }
    for theirs, ours in pairs.items():
        assert torch.equal(own[ours], state[theirs]), theirs
    # FrozenBN buffers, no epsilon; the stride of layer2..4[0] sits in conv1
    assert model.body.bn1.eps == 0.0 and all(m.eps == 0.0 for m in model.body.modules() if hasattr(m, "eps"))
    for layer in (model.body.layer2, model.body.layer3, model.body.layer4):
        assert layer[0].conv1.stride == (2, 2) and layer[0].conv2.stride == (1, 1)
        assert layer[0].downsample[0].stride == (2, 2)
    for level, cell in enumerate(model.anchor_generator.cells()):
        assert cell.tolist() == [CELL_ANCHORS[level]]


@pytest.mark.parametrize("layout", ["model", "bare"])
def test_other_wrappings_load_the_same(atss_ckpt, atss_model, tmp_path, layout):
    path, state = atss_ckpt
    ref = atss_model.state_dict()
    p = tmp_path / f"{layout}.pth"
    save_original(p, state, layout)
    got = assigndet.build_detector("atss_R_50_FPN_1x", weights=str(p)).state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def _run_and_compare(ckpt, preset: str, quality: str, paa: bool, image: torch.Tensor, *, stages: bool = True,
                     model=None):
    """End to end (``model([image])``) against the reference; with ``stages`` also every
    intermediate. Returns our detections, the reference's, the model and our head outputs."""
    path, state = ckpt
    if model is None:
        model = assigndet.build_detector(preset, weights=str(path), overrides=SMALL).eval()
    ref, ref_batch, ref_feats, ref_head_out = ref_detect(state, image, quality=quality, paa=paa)
    if not stages:
        with torch.no_grad():
            ours = model([image])[0]
        assert len(ref["scores"]) > 20
        assert_same_detections(ours, ref)
        return ours, ref, model, None
    with torch.no_grad():
        batch, sizes, _ = model.transform([image])
        # stage: resize (PIL on uint8), BGR·255 − caffe2 mean, zero padding to 32, batch of one
        assert batch.shape == ref_batch.shape
        torch.testing.assert_close(batch, ref_batch, atol=1e-4, rtol=0)
        body = model.body(batch)
        ref_body = ref_backbone(state, ref_batch)
        for ours, theirs in zip(body, ref_body):  # caffe2 R-50 with FrozenBN without eps
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))
        feats = model.fpn(body[1:])
        for ours, theirs in zip(feats, ref_feats):
            assert ours.shape == theirs.shape
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))
        logits, deltas, qual = model.head(feats)
        anchors, num_per_level = model.anchors(feats)
        ref_anc = torch.cat(ref_anchors(state, ref_feats))
        assert torch.equal(anchors, ref_anc)
        r_logits = torch.cat([c.permute(1, 2, 0).reshape(-1, c.shape[0]) for c, _, _ in ref_head_out])
        r_deltas = torch.cat([b.permute(1, 2, 0).reshape(-1, 4) for _, b, _ in ref_head_out])
        r_q = torch.cat([q.reshape(-1) for _, _, q in ref_head_out])
        torch.testing.assert_close(logits[0], r_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(deltas[0], r_deltas, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(qual[0], r_q, atol=1e-4, rtol=1e-4)
        ours = model([image])[0]
    assert len(ref["scores"]) > 20  # a non-trivial case: thresholds, NMS and top-k all act
    assert_same_detections(ours, ref)
    return ours, ref, model, (logits, deltas, qual, anchors, num_per_level, sizes)


@pytest.mark.parametrize("shape", [(150, 230), (160, 245)], ids=["original-image", "already-resized"])
def test_atss_detections_equal_the_reference(atss_ckpt, atss_model, shape):
    image = _image(*shape, seed=3)
    ours, ref, model, _ = _run_and_compare(atss_ckpt, "atss_R_50_FPN_1x", "centerness", False, image,
                                           stages=shape == (150, 230), model=atss_model)
    if shape == (160, 245):
        assert model.transform([image])[1] == [(160, 245)]  # short side already S: no resize
    assert (ours["scores"][:-1] >= ours["scores"][1:]).all()
    assert len(ours["scores"]) == 100 or len(ours["scores"]) < 100


def test_paa_detections_with_score_voting_equal_the_reference(paa_ckpt):
    image = _image(150, 230, seed=4)
    ours, ref, model, _ = _run_and_compare(paa_ckpt, "paa_R_50_FPN_1x", "iou_pred", True, image, stages=False)
    assert model.cfg.score_voting
    # voting moved the boxes well beyond the tolerance, so matching the voted boxes proves it ran
    assert (ref["nms_boxes"] - ref["boxes"]).abs().max() > 0.5


def test_transform_resizes_uint8_like_pil(atss_model):
    image = _image(137, 211, seed=5)
    model = atss_model
    batch, sizes, _ = model.transform([image])
    h, w = sizes[0]
    pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((w, h), Image.BILINEAR)
    expect = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float().flip(0)
    expect = expect - torch.tensor(CAFFE2_MEAN).view(3, 1, 1)
    assert torch.equal(batch[0, :, :h, :w], expect)  # byte-exact resize, BGR, caffe2 mean
    assert (batch[0, :, h:, :] == 0).all() and (batch[0, :, :, w:] == 0).all()
    assert batch.shape[-2] % 32 == 0 and batch.shape[-1] % 32 == 0 and batch.shape[-2] - h < 32


def test_wrong_conventions_would_be_caught(atss_ckpt):
    """The stage checks are sensitive to the traps of SPEC §8.3: an epsilon in FrozenBN or the
    stride on the 3x3 conv changes the body output far beyond the test tolerances."""
    path, state = atss_ckpt
    image = _image(96, 128, seed=6)
    batch, _ = ref_preprocess(image, 96, 256)
    ref_c5 = ref_backbone(state, batch)[3]
    for override in ("model.backbone.frozen_bn_eps=1e-5", "model.backbone.style=pytorch"):
        m = assigndet.build_detector("atss_R_50_FPN_1x", weights=str(path), overrides=[override]).eval()
        with torch.no_grad():
            c5 = m.body(batch)[3]
        assert (c5 - ref_c5).abs().max() > 1e-3 * ref_c5.abs().max(), override  # 10x the stage tolerance


def test_fast_path_and_plain_path_give_the_same_detections(atss_model):
    """model.fast_path (FrozenBN folded into the convs, channels-last) against the plain modules on
    the released checkpoint: the same detections within the parity tolerances (0.01 px, 2e-5)."""
    image = _image(150, 230, seed=3)
    model = atss_model
    assert model.cfg.fast_path and model.body.fast
    with torch.no_grad():
        fast = model([image])[0]
        model.body.fast = False
        try:
            plain = model([image])[0]
        finally:
            model.body.fast = True
    assert len(plain["scores"]) > 20
    assert_same_detections(fast, plain)
