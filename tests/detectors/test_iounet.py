"""IoU-Net (SPEC §5.2-5.4, §11): the IoU-balanced RoI generator, the IoU head and its losses,
inference (IoU-guided NMS, refinement through PrRoIPool, the ablation switches), presets."""
import dataclasses

import pytest
import torch

import assigndet
from assigndet.boxes import box_iou
from assigndet.presets import PUBLISHED_AP, load_config
from assigndet.detectors import build_model
from assigndet.detectors import iounet as iounet_mod
from assigndet.detectors.iounet import (IoUBalancedRoIGenerator, IoUHead, IoUNet, apply_deltas, delta_iou_bins,
                                        delta_mesh)
from assigndet.detectors.rcnn_parts import rcnn_detect
from assigndet.ops import MultiScalePrRoIPool
from assigndet.ops.prroi_pool import map_roi_levels
from assigndet.postprocess.iou_nms import refine_boxes
from test_faster_rcnn import TINY as TINY_RCNN
from test_faster_rcnn import check_eval_output, images_and_targets
from conftest import check_finite_backward

#: the tiny two-stage model of test_faster_rcnn with a small IoU head and few generated RoIs
TINY = TINY_RCNN + ["model.rcnn.iounet.head_dim=32", "model.rcnn.iounet.sample_num=64"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(overrides=()):
    torch.manual_seed(0)
    return build_model(load_config("iounet_R_18_shapes", TINY + list(overrides)).model)


# -- RoI generator -------------------------------------------------------------------------------


def test_delta_mesh_and_bin_populations():
    mesh = delta_mesh()
    assert mesh.shape == (246016, 4)  # 31 * 31 * 16 * 16
    bins = delta_iou_bins(mesh)
    counts = torch.bincount(bins[bins >= 0], minlength=10).tolist()
    assert counts == [80720, 39864, 32064, 31908, 32159, 19170, 7010, 2372, 670, 79]  # SPEC §11
    gen = IoUBalancedRoIGenerator()
    assert gen.bin_populations == counts
    assert gen.bin_counts == [4000] * 7 + [2372, 670, 79]  # at most pre_sample = 4000 per bin
    assert gen.deltas.shape == (sum(gen.bin_counts), 4) and "deltas" not in gen.state_dict()
    # built once, deterministically, without touching the global RNG
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    gen2 = IoUBalancedRoIGenerator()
    assert torch.rand(1) == before
    torch.testing.assert_close(gen.deltas, gen2.deltas)


def test_generated_rois_per_image():
    gen = IoUBalancedRoIGenerator()
    assert len(gen.draw_deltas()) == 4 * 201 + 79  # int(1000 / 5) + 1 per bin; the top bin has 79
    gt = torch.tensor([[100.0, 120.0, 300.0, 260.0]])
    rois = gen(gt, (10000, 10000))  # no clipping here
    assert rois.shape == (883, 4)
    iou = box_iou(rois, gt, offset=0.0)[:, 0]
    assert iou.min() >= 0.5 - 1e-5 and iou.max() < 1.0  # bins 5..9; IoU is scale invariant
    # about 1/5 of the RoIs per bin (201, 201, 201, 201, 79)
    hist = torch.histc(iou, bins=5, min=0.5, max=1.0)
    assert hist.tolist() == pytest.approx([201, 201, 201, 201, 79], abs=3)
    # several GTs: sample_num RoIs, clipped to the image
    gts = torch.tensor([[0.0, 0.0, 50.0, 40.0], [30.0, 20.0, 90.0, 64.0], [60.0, 0.0, 96.0, 30.0]])
    rois = gen(gts, (64, 96))
    assert rois.shape == (1000, 4)
    assert rois[:, 0::2].min() >= 0 and rois[:, 0::2].max() <= 96 and rois[:, 1::2].max() <= 64
    assert gen(torch.zeros(0, 4), (64, 96)).shape == (0, 4)


def test_apply_deltas():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # cx 20, cy 40, w 20, h 40
    deltas = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, -0.25, 2.0, 0.5]])
    out = apply_deltas(boxes, deltas)[0]
    torch.testing.assert_close(out, torch.tensor([[10.0, 20.0, 30.0, 60.0], [10.0, 20.0, 50.0, 40.0]]))


# -- IoU head and losses -------------------------------------------------------------------------


def test_iou_head_loss_types():
    head = IoUHead(12, 8, 3, loss="smoothl1")
    raw = torch.tensor([-1.0, 0.0, 0.6])
    torch.testing.assert_close(head.to_iou(raw), torch.tensor([0.0, 0.5, 0.8]))
    target = torch.tensor([0.5, 0.75, 0.9])  # normalised: 0, 0.5, 0.8
    expect = torch.nn.functional.smooth_l1_loss(raw, torch.tensor([0.0, 0.5, 0.8]), beta=1.0)
    torch.testing.assert_close(head.loss(raw, target), expect)
    bce = IoUHead(12, 8, 3, loss="bce")
    torch.testing.assert_close(bce.to_iou(raw), raw.sigmoid())
    torch.testing.assert_close(bce.loss(raw, target),
                               torch.nn.functional.binary_cross_entropy_with_logits(raw, target))
    with pytest.raises(ValueError):
        IoUHead(12, 8, 3, loss="l2")


@pytest.mark.parametrize("loss", ["smoothl1", "bce"])
def test_iou_loss_positives_only_class_column_weight_5(loss, monkeypatch):
    m = tiny([f"model.rcnn.iounet.loss={loss}", "model.rcnn.iounet.loss_weight=5"]).train()  # the reference's
    h = m.roi_heads
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0], [40.0, 5.0, 60.0, 60.0]])
    rois = torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 10.0, 50.0, 52.0], [40.0, 10.0, 60.0, 58.0],
                         [0.0, 0.0, 8.0, 8.0]])  # the last one has IoU < 0.5: not used
    monkeypatch.setattr(h.roi_generator, "forward", lambda g, size: rois)
    torch.manual_seed(0)
    feats = [torch.randn(1, 16, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    targets = [{"boxes": gt, "labels": torch.tensor([1, 3])}]  # torchvision labels (1-based)
    got = h.iou_losses(feats, [(64, 64)], targets)["loss_iou"]
    # by hand: the three positives, their best GT, the column of its class
    pos = rois[:3]
    best = box_iou(pos, gt, offset=0.0).max(dim=1)
    raw = h.iou_head(h.box_roi_pool(feats, [pos], [(64, 64)]))
    raw = raw[torch.arange(3), torch.tensor([0, 0, 2])]
    assert best.indices.tolist() == [0, 0, 1]
    expect = 5.0 * h.iou_head.loss(raw, best.values)
    torch.testing.assert_close(got, expect)


@pytest.mark.parametrize("num_gt", [0, 1, 3])
def test_losses_finite_and_backward(num_gt):
    m = tiny().train()
    imgs, targets = images_and_targets(num_gt)
    losses = m(imgs, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_bbox", "loss_iou"}
    check_finite_backward(m, losses)
    if num_gt == 0:
        assert losses["loss_iou"].item() == 0
    else:
        assert losses["loss_iou"].item() > 0
        assert m.roi_heads.iou_head.fc1.weight.grad.abs().sum() > 0


def test_iou_loss_reaches_the_backbone_unless_detached():
    imgs, targets = images_and_targets(2)
    for detach in (False, True):
        m = tiny([f"model.rcnn.iounet.detach_features={str(detach).lower()}"]).train()
        m(imgs, targets)["loss_iou"].backward()
        assert m.roi_heads.iou_head.fc1.weight.grad.abs().sum() > 0
        g = m.fpn.fpn.layer_blocks[0][0].weight.grad
        assert (g is None or g.abs().sum() == 0) == detach


def test_training_reduces_the_losses():
    m = tiny(["model.rcnn.rpn_batch_size_per_image=64"]).train()
    imgs, targets = images_and_targets(3)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    hist = []
    for it in range(25):
        torch.manual_seed(it)  # samplers and the RoI generator draw from the global RNG
        losses = m(imgs, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)  # as the shapes presets (from scratch)
        opt.step()
        hist.append((loss.item(), losses["loss_iou"].item()))
    assert hist[-1][0] < 0.7 * hist[0][0] and hist[-1][1] < hist[0][1]


# -- inference -----------------------------------------------------------------------------------


def test_eval_output_format_in_original_pixels():
    # refined boxes are not clipped (as the reference)
    out = check_eval_output(tiny(["model.score_thresh=0.0"]).eval(), clipped=False)
    assert all(len(d["boxes"]) <= 100 for d in out)


def _features(m, imgs):
    with torch.no_grad():
        batch, sizes, _ = m.transform(imgs)
        feats = m.features(batch)
        proposals, _ = m.rpn(feats, sizes)
    return feats[:4], proposals, sizes


def test_iou_fn_gradient_reaches_box_coordinates():
    """The refinement objective, predicted IoU of the box's class through MultiScalePrRoIPool + IoU head,
    has the exact gradient w.r.t. the box coordinates (finite differences in float64)."""
    m = tiny().eval().double()
    imgs, _ = images_and_targets()
    feats, _, sizes = _features(m, [i.double() / 255 for i in imgs])
    assert isinstance(m.roi_heads.box_roi_pool, MultiScalePrRoIPool)
    boxes = torch.tensor([[6.3, 8.1, 41.7, 47.2], [20.2, 12.9, 30.6, 33.4]], dtype=torch.float64)
    labels = torch.tensor([0, 2])

    def f(b):
        return m.roi_heads.predict_iou(feats, [b], sizes[:1])[torch.arange(2), labels]

    b = boxes.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(b).sum(), b)
    assert g.abs().min() > 0
    eps = 1e-5
    fd = torch.zeros_like(boxes)
    for i in range(2):
        for j in range(4):
            d = torch.zeros_like(boxes)
            d[i, j] = eps
            fd[i, j] = (f(boxes + d)[i] - f(boxes - d)[i]) / (2 * eps)
    torch.testing.assert_close(g, fd, rtol=1e-4, atol=1e-8)


def test_refinement_improves_predicted_iou_and_rechooses_the_level():
    m = tiny().eval()
    imgs, _ = images_and_targets()
    feats, proposals, sizes = _features(m, imgs)
    boxes = proposals[0][:20]
    labels = torch.arange(20) % 3

    def iou_fn(b):
        return m.roi_heads.predict_iou(feats, [b], sizes[:1])[torch.arange(len(b)), labels]

    with torch.no_grad():
        before = iou_fn(boxes)
    # one small ascent step, never stopping: first order, every IoU goes up
    out, after = refine_boxes(boxes, iou_fn, steps=1, omega1=-1.0, omega2=-1e9, step_size=0.02)
    moved = (out - boxes).abs().amax(1) > 0
    assert moved.all()
    assert (after >= before - 1e-6).float().mean() > 0.9 and after.mean() > before.mean()
    # the FPN level follows the current box: a box grown across the 112 px boundary is read from P3
    small = torch.tensor([[10.0, 10.0, 110.0, 110.0]])  # sqrt(area) 100 < 112 -> P2
    big = torch.tensor([[10.0, 10.0, 140.0, 140.0]])  # 130 -> P3
    assert map_roi_levels(small, 4).item() == 0 and map_roi_levels(big, 4).item() == 1
    pool = m.roi_heads.box_roi_pool
    from assigndet.ops import prroi_pool

    ref = prroi_pool(feats[1], torch.cat([torch.zeros(1, 1), big], 1), 7, 1 / 8)
    torch.testing.assert_close(pool(feats, [big], sizes[:1]), ref)


class _Spy:
    def __init__(self, fn):
        self.fn, self.calls, self.results = fn, [], []

    def __call__(self, *args, **kw):
        self.calls.append((args, kw))
        self.results.append(self.fn(*args, **kw))
        return self.results[-1]


def _detect(m, imgs, **switches):
    """detect() with the model's preset switches changed by ``switches`` (not cumulative)."""
    feats, proposals, sizes = _features(m, imgs)
    if not hasattr(m, "preset_icfg"):
        m.preset_icfg = m.roi_heads.icfg
    m.roi_heads.icfg = dataclasses.replace(m.preset_icfg, **switches)
    return m.roi_heads.detect(feats, proposals, sizes), (feats, proposals, sizes)


def test_ablation_switches(monkeypatch):
    m = tiny().eval()
    imgs, _ = images_and_targets()
    base = m.roi_heads.icfg
    nms = _Spy(iounet_mod.iou_guided_nms)
    refine = _Spy(iounet_mod.refine_boxes)
    monkeypatch.setattr(iounet_mod, "iou_guided_nms", nms)
    monkeypatch.setattr(iounet_mod, "refine_boxes", refine)
    head = _Spy(m.roi_heads.iou_head.forward)
    monkeypatch.setattr(m.roi_heads.iou_head, "forward", head)

    # IoU head unused at test: Faster R-CNN's post-processing, no IoU head, no IoU-NMS, no refinement
    dets, (feats, proposals, sizes) = _detect(m, imgs, test_iou_head=False)
    plain = rcnn_detect(m.roi_heads, feats, proposals, sizes)
    assert not head.calls and not nms.calls and not refine.calls
    for d, p in zip(dets, plain):
        torch.testing.assert_close(d["boxes"], p["boxes"])

    # IoU-NMS ranked by IoU, no refinement: scores are the clusters' class scores
    m.roi_heads.icfg = base
    dets, _ = _detect(m, imgs, refine=False)
    assert [c[1]["rank_by"] for c in nms.calls] == ["iou", "iou"] and not refine.calls and head.calls
    for d, (keep, cluster_scores) in zip(dets, nms.results):
        assert len(d["boxes"]) == min(100, len(keep)) > 0
        torch.testing.assert_close(d["scores"], cluster_scores[:100])  # not multiplied by the IoU
    # IoU-NMS off: ranked by the class score
    nms.calls.clear()
    _detect(m, imgs, iou_nms=False, refine=False)
    assert [c[1]["rank_by"] for c in nms.calls] == ["score", "score"]
    nms.calls.clear()
    _detect(m, imgs, rank_by="score_iou", refine=False)
    assert [c[1]["rank_by"] for c in nms.calls] == ["score_iou", "score_iou"]

    # refinement: one call for the whole batch, at most pre_refine boxes per image, T / Omega / lambda passed
    nms.calls.clear()
    no_ref, _ = _detect(m, imgs, refine=False, use_iou_score=False)
    dets, _ = _detect(m, imgs, refine=True, use_iou_score=False, pre_refine=5, steps=3, step_size=2.0, omega1=0.002,
                      omega2=-0.05)
    assert len(refine.calls) == 1
    args, kw = refine.calls[0]
    assert len(args[0]) == sum(min(5, len(d["boxes"])) for d in no_ref)
    assert kw == dict(steps=3, omega1=0.002, omega2=-0.05, step_size=2.0)
    for d, n in zip(dets, no_ref):
        assert len(d["boxes"]) == min(5, len(n["boxes"]))
        # use_iou_score off: the scores are the NMS cluster scores of the first 5 kept boxes
        torch.testing.assert_close(d["scores"].sort().values, n["scores"][:5].sort().values)
    # use_iou_score on: score = cluster score x refined IoU
    refine.calls.clear()
    scored, _ = _detect(m, imgs, refine=True, use_iou_score=True, pre_refine=5)
    ious = refine.fn(*refine.calls[0][0], **refine.calls[0][1])[1]  # deterministic: same boxes, same head
    cluster = torch.cat([n["scores"][:5] for n in no_ref])
    got = torch.cat([s["scores"] for s in scored]).sort().values
    torch.testing.assert_close(got, (cluster * ious).sort().values)


def test_refine_is_one_batched_forward_per_step_and_equals_plain_refinement():
    m = tiny().eval()
    imgs, _ = images_and_targets()
    feats, proposals, sizes = _features(m, imgs)
    dets = [dict(boxes=p[:7].clone(), labels=torch.arange(7) % 3, scores=torch.ones(7)) for p in proposals]
    calls = []
    pool = m.roi_heads.box_roi_pool
    orig = pool.forward

    def spy(features, boxes, image_shapes=None):
        calls.append([len(b) for b in boxes])
        return orig(features, boxes, image_shapes)

    pool.forward = spy
    ic = m.roi_heads.icfg
    m.roi_heads.icfg = dataclasses.replace(ic, omega1=-1.0, omega2=-1e9, step_size=0.05)  # all 5 steps
    m.roi_heads.refine(feats, dets, sizes)
    assert calls == [[7, 7]] * 6  # every image in each of the T + 1 forwards
    # boxes that stopped are not forwarded again; the result equals refine_boxes with a plain iou_fn
    calls.clear()
    m.roi_heads.icfg = ic
    start = [dict(boxes=p[:7].clone(), labels=torch.arange(7) % 3, scores=torch.ones(7)) for p in proposals]
    m.roi_heads.refine(feats, start, sizes)
    pool.forward = orig
    labels2 = torch.cat([torch.arange(7) % 3, torch.arange(7) % 3])

    def plain(b):
        out = m.roi_heads.predict_iou(feats, [b[:7], b[7:]], sizes)
        return out[torch.arange(14), labels2]

    ref_boxes, ref_ious = refine_boxes(torch.cat([p[:7] for p in proposals]), plain, steps=ic.steps,
                                       omega1=ic.omega1, omega2=ic.omega2, step_size=ic.step_size)
    torch.testing.assert_close(torch.cat([d["boxes"] for d in start]), ref_boxes)
    torch.testing.assert_close(torch.cat([d["ious"] for d in start]), ref_ious)
    assert sum(sum(c) for c in calls) <= 14 * 6


# -- presets -------------------------------------------------------------------------------------


def test_iounet_presets():
    expect = {
        "iounet_R_50_FPN_1x": ("smoothl1", 0.5, "iou", 39.3),
        "iounet_R_50_FPN_bce_1x": ("bce", 0.5, "iou", 39.6),
        "iounet_R_50_FPN_bce_lambda2_1x": ("bce", 2.0, "iou", 39.7),
        "iounet_R_50_FPN_imprv_1x": ("bce", 2.0, "score_iou", 40.0),
    }
    for name, (loss, lam, rank, ap) in expect.items():
        cfg = load_config(name)
        i = cfg.model.rcnn.iounet
        assert (i.loss, i.step_size, i.rank_by, PUBLISHED_AP[name]) == (loss, lam, rank, ap)
        assert (i.steps, i.omega1, i.omega2, i.pre_refine, i.loss_weight) == (5, 0.001, -0.01, 100, 5.0)
        assert i.test_iou_head and i.iou_nms and i.refine and i.use_iou_score
    m = assigndet.build_detector("iounet_R_50_FPN_1x")
    assert isinstance(m, IoUNet) and isinstance(m.roi_heads.box_roi_pool, MultiScalePrRoIPool)
    h = m.roi_heads.iou_head
    assert (h.fc1.in_features, h.fc1.out_features, h.fc2.out_features, h.fc_iou.out_features) == (12544, 1024, 1024, 80)
    small = assigndet.build_detector("iounet_R_18_shapes")
    assert small.roi_heads.iou_head.fc_iou.out_features == 7
    assert small.roi_heads.icfg.loss_weight == 1.0 and not small.roi_heads.icfg.detach_features
    with pytest.raises(ValueError, match="prroi"):
        build_model(load_config("iounet_R_18_shapes", ["model.rcnn.roi_pool=roi_align"]).model)


def test_r50_iounet_tiny_input_smoke():
    """The one R-50 forward of the suite: iounet_R_50_FPN_1x on a 64 x 96 input, eval mode."""
    torch.manual_seed(0)
    m = assigndet.build_detector("iounet_R_50_FPN_1x", overrides=[
        "model.input.min_size_test=64", "model.input.max_size_test=96", "model.rcnn.rpn_post_nms_top_n_test=100",
        "model.rcnn.iounet.steps=1"]).eval()
    with torch.no_grad():
        m.roi_heads.box_predictor.cls_score.weight.mul_(50)  # give some classes p >= 0.05
        out = m([(torch.rand(3, 64, 96) * 255).to(torch.uint8)])
    assert set(out[0]) == {"boxes", "scores", "labels"} and len(out[0]["boxes"]) <= 100
    if len(out[0]["boxes"]):
        assert out[0]["labels"].max() < 80
