"""Test-time augmentation (SPEC §1.10): the vote merge against a naive transliteration of the
procedure, range filtering, and full runs of a tiny detector on the shapes dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from assigndet.presets import load_config
from assigndet.detectors import build_model
from assigndet.detectors.tta import remove_boxes_out_of_range, vote_merge


def naive_vote(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, thresh: float, soft: bool,
               score_thresh: float, topn: int):
    """SPEC §1.10 step 4-5, one loop iteration per cluster, float64."""
    out = []
    for c in sorted(set(labels.tolist())):
        det = np.concatenate([boxes[labels == c], scores[labels == c, None]], axis=1)
        if len(det) <= 1:
            out += [(row, c) for row in det]
            continue
        det = det[np.argsort(-det[:, 4], kind="stable")]
        dets = []
        while len(det):
            area = (det[:, 2] - det[:, 0] + 1) * (det[:, 3] - det[:, 1] + 1)
            iw = np.maximum(0, np.minimum(det[0, 2], det[:, 2]) - np.maximum(det[0, 0], det[:, 0]) + 1)
            ih = np.maximum(0, np.minimum(det[0, 3], det[:, 3]) - np.maximum(det[0, 1], det[:, 1]) + 1)
            o = iw * ih / (area[0] + area - iw * ih)
            idx = np.nonzero(o >= thresh)[0]
            acc, acc_iou = det[idx], o[idx]
            det = np.delete(det, idx, 0)
            if len(idx) <= 1:
                dets += list(acc)
                continue
            merged = np.zeros(5)
            merged[:4] = (acc[:, :4] * acc[:, 4:]).sum(0) / acc[:, 4].sum()
            merged[4] = acc[:, 4].max()
            dets.append(merged)
            if soft:
                dec = acc.copy()
                dec[:, 4] *= 1 - acc_iou
                dets += list(dec[dec[:, 4] >= score_thresh])
        out += [(row, c) for row in dets]
    s = np.array([r[4] for r, _ in out])
    if len(s) > topn:
        t = np.sort(s)[::-1][topn - 1]
        out = [o for o in out if o[0][4] >= t]
    return out


@pytest.mark.parametrize("soft", [True, False])
def test_vote_merge_matches_naive(soft):
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(12, 2, generator=g) * 200
    sizes = torch.rand(12, 2, generator=g) * 60 + 10
    k = torch.randint(0, 12, (300,), generator=g)
    jitter = torch.randn(300, 4, generator=g) * 3
    boxes = torch.cat([centres[k] - sizes[k] / 2, centres[k] + sizes[k] / 2], 1) + jitter
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = torch.rand(300, generator=g) * 0.9 + 0.05
    labels = torch.randint(0, 3, (300,), generator=g)
    topn = 150
    out = vote_merge(boxes, scores, labels, thresh=0.66, soft=soft, score_thresh=0.05, max_detections=topn)
    ref = naive_vote(boxes.double().numpy(), scores.double().numpy(), labels.numpy(), 0.66, soft, 0.05, topn)
    assert len(out["scores"]) == len(ref)
    assert (out["scores"][:-1] >= out["scores"][1:]).all()
    ref_sorted = sorted(ref, key=lambda r: (r[1], -r[0][4], r[0][0]))
    ours = sorted(zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()),
                  key=lambda r: (r[2], -r[1], r[0][0]))
    for (b, s, lab), (row, c) in zip(ours, ref_sorted):
        assert lab == c
        assert s == pytest.approx(row[4], abs=1e-5)
        assert b == pytest.approx(list(row[:4]), abs=1e-3)
    if soft:  # decayed duplicates exist and stay above the threshold
        assert len(out["scores"]) > len(torch.unique(labels)) and (out["scores"] >= 0.05).all()


def test_vote_merge_singletons_and_empty():
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 120.0, 130.0]])
    out = vote_merge(b, torch.tensor([0.9, 0.3]), torch.tensor([1, 1]))
    assert torch.equal(out["boxes"], b) and out["labels"].tolist() == [1, 1]
    empty = vote_merge(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert empty["boxes"].shape == (0, 4)


def test_scale_range_filter_is_strict_with_plus_one():
    boxes = torch.tensor([[0.0, 0.0, 95.0, 95.0], [0.0, 0.0, 94.0, 95.0], [0.0, 0.0, 96.0, 95.0]])
    # (w + 1)(h + 1) = 96 * 96, 95 * 96, 97 * 96: lo = 96 keeps only the strictly larger one
    assert remove_boxes_out_of_range(boxes, 96, 1e4).tolist() == [False, False, True]
    assert remove_boxes_out_of_range(boxes, 0, 96).tolist() == [False, True, False]


TTA = ["model.tta.enabled=true", "model.tta.scales=[48,96]", "model.tta.scale_ranges=[[0,64],[16,10000]]",
       "model.tta.max_size=160", "model.score_thresh=0.0", "model.detections_per_img=50"]


def _tiny(overrides):
    from conftest import TINY_OVERRIDES

    torch.manual_seed(0)
    cfg = load_config("paa_R_18_shapes", TINY_OVERRIDES + list(overrides))
    return build_model(cfg.model).eval(), cfg


def test_identity_only_tta_equals_plain_inference():
    """Without flips and extra scales the vote merge sees one NMS'd run: no two boxes of a class
    overlap by >= 0.66 (NMS removed > 0.6), so the result is the plain detections."""
    m, _ = _tiny(["model.score_thresh=0.0", "model.tta.hflip=false", "model.tta.scale_hflip=false",
                  "model.tta.scales=[]", "model.tta.scale_ranges=[]"])
    img = torch.randint(0, 255, (3, 70, 90), dtype=torch.uint8)
    with torch.no_grad():
        plain = m([img])[0]
        m.cfg.tta.enabled = True
        tta = m([img])[0]
    assert len(plain["scores"]) > 10
    torch.testing.assert_close(tta["scores"], plain["scores"])
    torch.testing.assert_close(tta["boxes"], plain["boxes"])


@pytest.mark.parametrize("vote", [True, False])
def test_tta_runs_on_the_shapes_dataset(tmp_path, vote):
    from assigndet.data import generate_shapes
    from assigndet.engine import evaluate

    root = tmp_path / "shapes"
    generate_shapes(root, num_train=1, num_val=2, seed=0, min_side=64, max_side=112)
    m, cfg = _tiny(TTA + [f"model.tta.vote={str(vote).lower()}", "model.num_classes=7", f"data.root={root}",
                          "test.ims_per_batch=2", "test.num_workers=0"])
    metrics = evaluate(m, cfg, tmp_path / "eval", verbose=False)
    assert 0.0 <= metrics["AP"] <= 1.0
    dets = __import__("json").loads((tmp_path / "eval" / "detections.json").read_text())
    assert dets and all(d["bbox"][2] >= 0 and d["bbox"][3] >= 0 for d in dets)
    per_image = {}
    for d in dets:
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
    limit = cfg.model.tta.detections_per_img if vote else cfg.model.detections_per_img
    assert max(per_image.values()) <= limit
    if vote:  # the merge keeps more than the per-run 50: the other runs contributed
        assert max(per_image.values()) > 50
