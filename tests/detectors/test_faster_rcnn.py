"""Faster R-CNN and PAA in the RPN (SPEC §3.6, §5.1): tiny models, hand-made assignment cases,
the R-50 presets."""
import math

import pytest
import torch
import torch.nn.functional as F

import assigndet
from assigndet.presets import PUBLISHED_AP, load_config
from assigndet.detectors import TargetError, build_model
from assigndet.detectors.faster_rcnn import FasterRCNN
from assigndet.detectors.rcnn_parts import RPN, LevelRoIAlign, paa_proposal_logit, rpn_match
from conftest import check_finite_backward

pytestmark = pytest.mark.usefixtures("one_thread")


#: a tiny two-stage model: R-18 of width 8, FPN 16 channels, 64-96 px inputs, few RoIs
TINY = [
    "model.num_classes=3",
    "model.backbone.base_width=8",
    "model.fpn_channels=16",
    "model.input.min_size_train=[64]",
    "model.input.max_size_train=96",
    "model.input.min_size_test=64",
    "model.input.max_size_test=96",
    "model.rcnn.box_head_dim=32",
    "model.rcnn.rpn_pre_nms_top_n_train=200",
    "model.rcnn.rpn_post_nms_top_n_train=64",
    "model.rcnn.rpn_pre_nms_top_n_test=200",
    "model.rcnn.rpn_post_nms_top_n_test=64",
    "model.rcnn.box_batch_size_per_image=32",
]


def tiny(preset="faster_rcnn_R_18_shapes", overrides=()):
    torch.manual_seed(0)
    return build_model(load_config(preset, TINY + list(overrides)).model)


def images_and_targets(num_gt=2):
    g = torch.Generator().manual_seed(0)
    imgs = [(torch.rand(3, 64, 80, generator=g) * 255).to(torch.uint8),
            (torch.rand(3, 72, 64, generator=g) * 255).to(torch.uint8)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0], [50.0, 40.0, 78.0, 62.0]]),
         "labels": torch.tensor([0, 2, 1])},
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
    ]
    return imgs, [{"boxes": t["boxes"][:num_gt], "labels": t["labels"][:num_gt]} for t in targets]


LOSS_KEYS = {
    "faster_rcnn_R_18_shapes": {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_bbox"},
    "faster_rcnn_R_18_paa_shapes": {"loss_rpn_cls", "loss_rpn_loc", "loss_rpn_iou", "loss_cls", "loss_bbox"},
}


@pytest.mark.parametrize("preset", sorted(LOSS_KEYS))
@pytest.mark.parametrize("num_gt", [0, 1, 3])
def test_losses_finite_and_backward(preset, num_gt):
    m = tiny(preset).train()
    imgs, targets = images_and_targets(num_gt)
    losses = m(imgs, targets)
    assert set(losses) == LOSS_KEYS[preset]
    check_finite_backward(m, losses)
    if num_gt == 0:
        assert all(losses[k].item() == 0 for k in ("loss_rpn_loc", "loss_bbox"))


def check_eval_output(m, num_classes=3, clipped=True):
    """Format, 0-based labels, sorted scores, <= 100 boxes, boxes in the input images' pixels
    (``clipped``: inside the image)."""
    imgs, _ = images_and_targets()
    imgs = imgs + [(torch.rand(3, 150, 100) * 255).to(torch.uint8)]  # resized to 96 x 64 inside
    with torch.no_grad():
        out = m(imgs)
        out_f = m([i.float() / 255 for i in imgs])
        batch, sizes, _ = m.transform(imgs)
        feats = m.features(batch)
        torch.manual_seed(0)
        inside = m.detect(feats, m.rpn(feats, sizes)[0], sizes)  # in the resized frame
    assert len(out) == 3 and sizes[2] == (96, 64)
    for d, img in zip(out, imgs):
        assert set(d) == {"boxes", "scores", "labels"}
        assert d["labels"].dtype == torch.int64 and 0 < len(d["boxes"]) <= 100
        assert d["labels"].min() >= 0 and d["labels"].max() < num_classes  # 0-based
        h, w = img.shape[-2:]
        if clipped:
            assert d["boxes"][:, 2].max() <= w + 1e-3 and d["boxes"][:, 3].max() <= h + 1e-3
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
    torch.testing.assert_close(out[2]["boxes"], inside[2]["boxes"] * 150 / 96)
    assert len(out_f[0]["boxes"]) > 0
    return out


@pytest.mark.parametrize("preset", sorted(LOSS_KEYS))
def test_eval_output_format_in_original_pixels(preset):
    check_eval_output(tiny(preset, ["model.score_thresh=0.0"]).eval())  # untrained: keep every score


def test_targets_are_checked_and_labels_shifted_for_torchvision(monkeypatch):
    """0-based labels go into torchvision's RoI heads as 1..C (0 = background) and come out 0-based:
    the targets the heads see are the input labels + 1, the detections are the heads' labels - 1."""
    from torchvision.models.detection.roi_heads import RoIHeads

    m = tiny().train()
    imgs, targets = images_and_targets(2)
    seen = []
    real_select = RoIHeads.select_training_samples

    def spy_select(self, proposals, tv_targets):
        seen.append([t["labels"].clone() for t in tv_targets])
        return real_select(self, proposals, tv_targets)

    monkeypatch.setattr(RoIHeads, "select_training_samples", spy_select)
    m(imgs, targets)
    assert [s.tolist() for s in seen[0]] == [(t["labels"] + 1).tolist() for t in targets]  # [[1, 3], [2]]
    targets[0]["labels"] = torch.tensor([2, 3])  # 3 = num_classes: refused (background is internal)
    with pytest.raises(TargetError):
        m(imgs, targets)

    m.eval()
    real_post = RoIHeads.postprocess_detections
    raw = []

    def spy_post(self, *args):
        out = real_post(self, *args)
        raw.append(out[2])
        return out

    monkeypatch.setattr(RoIHeads, "postprocess_detections", spy_post)
    m.roi_heads.score_thresh = 0.0  # untrained: keep every class
    with torch.no_grad():
        dets = m(imgs)
    assert all(len(lab) and lab.min() >= 1 for lab in raw[0])  # torchvision's labels: 1..C
    for d, lab in zip(dets, raw[0]):
        assert torch.equal(d["labels"], lab - 1) and d["labels"].min() >= 0


def test_training_reduces_the_loss():
    m = tiny(overrides=["model.rcnn.rpn_batch_size_per_image=64"]).train()
    imgs, targets = images_and_targets(3)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    first = last = None
    for it in range(25):
        torch.manual_seed(it)  # the samplers draw from the global RNG
        loss = sum(m(imgs, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < 0.7 * first


# -- RPN pieces ----------------------------------------------------------------------------------


def test_rpn_match_low_quality_rules():
    iou = torch.tensor([
        [0.80, 0.50, 0.20, 0.35, 0.00],  # GT 0
        [0.10, 0.55, 0.25, 0.35, 0.00],  # GT 1: best 0.55 at anchor 1 (also GT 0's 0.50)
        [0.00, 0.00, 0.28, 0.00, 0.00],  # GT 2: best 0.28 < 0.3
    ])
    # plain thresholds: anchor 0 positive; 1, 3 ignore (0.3 <= IoU < 0.7); 2, 4 background
    mm = rpn_match(iou, 0.7, 0.3, low_quality="mmdet")
    # mmdet: GT 1's best anchor (1) -> GT 1; GT 0's best is anchor 0 (already); GT 2's best < 0.3: nothing
    assert mm.tolist() == [0, 1, -1, -2, -1]
    d2 = rpn_match(iou, 0.7, 0.3, low_quality="detectron2")
    # detectron2: best anchors of every GT keep their own argmax GT, whatever the IoU (GT 2 -> anchor 2,
    # whose argmax is GT 2)
    assert d2.tolist() == [0, 1, 2, -2, -1]
    # mmdet: a best anchor shared by two GTs goes to the later GT
    tie = torch.tensor([[0.5, 0.1], [0.5, 0.2]])
    assert rpn_match(tie, 0.7, 0.3, low_quality="mmdet").tolist() == [1, -1]
    assert rpn_match(torch.zeros(0, 3), 0.7, 0.3).tolist() == [-1, -1, -1]


def tiny_rpn(**kw) -> RPN:
    cfg = load_config("faster_rcnn_R_18_paa_shapes", TINY).model.rcnn
    for k, v in kw.items():
        setattr(cfg, k, v)
    return RPN(cfg, 16)


def test_paa_rpn_assignment_hand_made():
    """Step A at IoU 0.1 with low-quality rescue, score = BCE(objectness) + L1(deltas), PAA's cut."""
    from assigndet.assign.paa import paa_partition

    rpn = tiny_rpn()
    gt0 = [0.0, 0.0, 40.0, 40.0]
    gt1 = [200.0, 200.0, 210.0, 210.0]
    anchors = torch.tensor(
        [gt0] * 6  # 0-5: exactly on GT 0
        + [[100.0, 100.0, 140.0, 140.0]] * 2  # 6-7: far from everything
        + [[190.0, 190.0, 240.0, 240.0]]  # 8: IoU 0.04 with GT 1, its best anchor: low-quality match
    )
    A = len(anchors)
    targets = [{"boxes": torch.tensor([gt0, gt1]), "labels": torch.tensor([1, 1])}]
    step_a = torch.tensor([0, 0, 0, 0, 0, 0, -1, -1, 1])

    def check(objectness, deltas, num_per_level=(A,), topk=9):
        matched = tiny_rpn(rpn_paa_topk=topk).paa_labels(objectness, deltas, anchors, list(num_per_level), targets)[0]
        # the score by hand: BCE against the step-A label + L1 of the deltas to the matched GT
        bce = F.softplus(-objectness[0])  # every matched anchor sits on its GT: target deltas 0 ...
        l1 = deltas[0].abs().sum(1)
        bce[8] = F.softplus(-objectness[0, 8])
        target8 = rpn.box_coder.encode_single(torch.tensor([gt1]), anchors[8:9])[0]  # ... except anchor 8
        l1[8] = (deltas[0, 8] - target8).abs().sum()
        score = torch.where(step_a >= 0, bce + l1, math.inf)
        ref = paa_partition(score, step_a, list(num_per_level), 2, topk=topk)
        assert matched.tolist() == ref.tolist()
        return matched

    # objectness of the six GT-0 anchors: three confident (BCE ~ 0), three not (BCE ~ 4-6)
    objectness = torch.tensor([[8.0, 7.0, 6.0, -4.0, -5.0, -6.0, 0.0, 0.0, 0.0]])
    m = check(objectness, torch.zeros(1, A, 4))
    assert m[6:].tolist() == [-1, -1, 1]  # unmatched stay background; a single candidate is positive
    assert m[0] == 0 and (m[3:6] == -1).all() and set(m[:3].tolist()) <= {0, -1}
    # the L1 part decides as well: equal objectness, deltas pushing three anchors off their GT
    deltas = torch.zeros(1, A, 4)
    deltas[0, [1, 3, 5], 0] = torch.tensor([5.0, 6.0, 7.0])
    m = check(torch.full((1, A), 2.0), deltas)
    assert (m[[1, 3, 5]] == -1).all() and m[0] == 0
    # candidates are the topk lowest scores *per level*: topk 2 on levels of 3 and 6 anchors
    m = check(torch.tensor([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 0.0, 0.0, 0.0]]), torch.zeros(1, A, 4), (3, 6), topk=2)
    assert m[2] == -1 and m[5] == -1  # the third of each level is never a candidate
    # no GT: everything background
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    assert (rpn.paa_labels(objectness, torch.zeros(1, A, 4), anchors, [A], empty) == -1).all()


def test_paa_rpn_losses_and_proposal_score():
    rpn = tiny_rpn()
    o = torch.tensor([-30.0, -2.0, 0.0, 3.0, 40.0])
    i = torch.tensor([5.0, 1.0, -1.0, 0.5, 40.0])
    p = torch.sqrt(torch.sigmoid(o.double()) * torch.sigmoid(i.double()))
    ref = torch.log(p / (1 - p)).float()
    got = paa_proposal_logit(o, i)
    torch.testing.assert_close(got[:4], ref[:4], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(got).all() and got[4] > got[3]  # saturated, still finite and ordered
    # losses: BCE / (256 N), L1 x IoU target / (256 N), IoU BCE / #sampled positives
    torch.manual_seed(0)
    feats = [torch.randn(1, 16, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4),
             torch.randn(1, 16, 2, 2), torch.randn(1, 16, 1, 1)]
    rpn.train()
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 36.0], [30.0, 20.0, 60.0, 60.0]]), "labels": torch.tensor([1, 1])}]
    boxes, losses = rpn(feats, [(64, 64)], targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_rpn_iou"}
    assert all(torch.isfinite(v) for v in losses.values())
    # untrained head: BCE(objectness ~ 0) ~ ln 2 for each of the 256 sampled anchors (of 1023), / 256
    assert losses["loss_rpn_cls"].item() == pytest.approx(math.log(2), rel=0.05)
    assert 0.5 < losses["loss_rpn_iou"].item() < 1.0  # BCE of logit ~0 against IoUs in (0, 1)
    assert len(boxes) == 1 and boxes[0].shape[1] == 4


def test_level_roi_align_matches_torchvision_per_level():
    from torchvision.ops import roi_align

    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 130.0, 120.0]]), torch.tensor([[10.0, 4.0, 300.0, 250.0]])]
    out = LevelRoIAlign((4, 8, 16, 32))(feats, boxes)
    assert out.shape == (3, 4, 7, 7)
    # levels: sqrt(400) = 20 -> P2; ~122 -> P3 (floor(log2(122/56)) = 1); ~270 -> P4
    for row, (img, box, lvl) in enumerate([(0, boxes[0][0], 0), (0, boxes[0][1], 1), (1, boxes[1][0], 2)]):
        rois = torch.cat([torch.tensor([float(img)]), box])[None]
        ref = roi_align(feats[lvl], rois, 7, 1.0 / (4 * 2**lvl), 0, aligned=True)
        torch.testing.assert_close(out[row], ref[0])


# -- presets -------------------------------------------------------------------------------------


def test_r50_presets_build_as_published():
    m = assigndet.build_detector("faster_rcnn_R_50_FPN_1x")
    assert isinstance(m, FasterRCNN)
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("body.conv1", "body.bn1", "body.layer1")) for n in frozen)
    m.train()
    assert all(not b.training for b in m.body.modules() if isinstance(b, torch.nn.BatchNorm2d))  # norm_eval
    assert m.fpn.fpn.layer_blocks[0][0].bias is not None
    assert m.rpn.anchor_generator.num_anchors_per_location == 3
    torch.testing.assert_close(m.rpn.anchor_generator.cells()[0][1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    assert isinstance(m.roi_heads.box_roi_pool, LevelRoIAlign)
    assert m.roi_heads.box_predictor.cls_score.out_features == 81
    assert m.roi_heads.nms_thresh == 0.5 and m.roi_heads.detections_per_img == 100
    assert m.transform.to_bgr255 is False and m.transform.resize_rule == "mmdet"
    cfg = load_config("faster_rcnn_R_50_FPN_1x")
    s = cfg.solver
    assert (s.base_lr, s.ims_per_batch, s.max_iter, s.steps) == (0.02, 16, 87960, [58640, 80630])
    assert (s.warmup_iters, s.warmup_factor, s.warmup_method) == (500, 0.001, "linear")
    assert cfg.model.offset == 0.0
    assert PUBLISHED_AP["faster_rcnn_R_50_FPN_1x"] == 37.6

    paa = assigndet.build_detector("faster_rcnn_R_50_FPN_paa_1x")
    assert paa.rpn.head.iou_pred is not None and paa.rpn.cfg.rpn_paa
    assert all(c.bias is None for c in paa.fpn.modules() if isinstance(c, torch.nn.Conv2d))
    assert paa.rpn._post_nms_top_n["testing"] == 2000
    assert paa.body.layer2[0].conv1.stride == (2, 2)  # MSRA caffe2 style
    assert PUBLISHED_AP["faster_rcnn_R_50_FPN_paa_1x"] == 39.292
    assert PUBLISHED_AP["faster_rcnn_R_50_FPN_detectron2_1x"] == 37.989
    for name in ("faster_rcnn_R_18_shapes", "faster_rcnn_R_18_paa_shapes"):
        small = assigndet.build_detector(name)
        assert small.roi_heads.box_predictor.cls_score.out_features == 8


def test_rpn_pools_proposals_per_level_then_per_image():
    m = tiny().eval()
    imgs, _ = images_and_targets()
    with torch.no_grad():
        batch, sizes, _ = m.transform(imgs)
        feats = m.features(batch)
        boxes, losses = m.rpn(feats, sizes)
    assert losses == {} and len(boxes) == 2
    for b, (h, w) in zip(boxes, sizes):
        assert len(b) <= 64 and b[:, 2].max() <= w and b[:, 3].max() <= h  # clipped to the image
