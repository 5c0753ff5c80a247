"""PAA score voting (SPEC §3.4): fixtures of kkhoot/PAA, naive loop, edge cases."""
from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import load_fixture

from assigndet.boxes import box_iou
from assigndet.postprocess.voting import score_voting


def reference_nms_keep(boxes, scores, labels, *, iou_threshold=0.6, detections_per_img=100):
    """Class-wise NMS with the +1 IoU (torchvision on boxes with x2, y2 + 1), suppress IoU > 0.6,
    then the k-th-value top-100 of maskrcnn-benchmark; indices in ascending order."""
    shifted = boxes.clone()
    shifted[:, 2:] += 1
    keep = torchvision.ops.batched_nms(shifted, scores, labels, iou_threshold)
    if keep.numel() > detections_per_img:
        kept_scores = scores[keep]
        kth = torch.kthvalue(kept_scores, keep.numel() - detections_per_img + 1).values
        keep = keep[kept_scores >= kth]
    return keep.sort().values


def naive_score_voting(det_boxes, det_labels, boxes, scores, labels, sigma=0.025, offset=1.0):
    """A per-detection loop as in kkhoot/PAA's inference.py."""
    out = det_boxes.clone()
    for i in range(len(det_boxes)):
        same = labels == det_labels[i]
        cand, s = boxes[same], scores[same]
        if cand.numel() == 0:
            continue
        iou = box_iou(det_boxes[i : i + 1], cand, offset=offset)[0]
        sel = iou > 0.01
        if not sel.any():
            continue
        w = (torch.exp(-(1 - iou[sel]) ** 2 / sigma) * s[sel])[:, None]
        out[i] = (cand[sel] * w).sum(0) / w.sum(0)
    return out


def test_reproduces_fixtures():
    cases = load_fixture("score_voting_cases.pt")
    assert cases
    for case in cases:
        keep = reference_nms_keep(
            case["boxes"], case["scores"], case["labels"],
            iou_threshold=case["nms_thresh"], detections_per_img=case["detections_per_img"],
        )
        assert torch.equal(keep, case["keep_idx"]), case["case_id"]
        assert torch.equal(case["boxes"][keep], case["nms_boxes"])
        voted = score_voting(
            case["boxes"][keep], case["labels"][keep],
            case["boxes"], case["scores"], case["labels"], sigma=case["sigma"], offset=1.0,
        )
        assert voted.dtype == torch.float32
        # float32 sums in another order than the reference's: ≤ a few ulps (≈ 5e-7 relative)
        torch.testing.assert_close(voted, case["voted_boxes"], rtol=1e-6, atol=1e-5)
        # scores and labels are untouched by voting
        assert torch.equal(case["scores"][keep], case["out_scores"])
        assert torch.equal(case["labels"][keep], case["out_labels"])


def test_matches_naive_loop_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    for offset in (1.0, 0.0):
        xy = torch.rand(300, 2, generator=g) * 400
        wh = torch.rand(300, 2, generator=g) * 120 + 2
        boxes = torch.cat((xy, xy + wh), dim=1).double()
        scores = torch.rand(300, generator=g).double()
        labels = torch.randint(1, 6, (300,), generator=g)
        keep = torch.randperm(300, generator=g)[:40]
        det = boxes[keep] + torch.randn(40, 4, generator=g).double()  # detections need not be candidates
        det_labels = labels[keep]
        det_labels[:3] = 9  # a class without candidates: box unchanged
        voted = score_voting(det, det_labels, boxes, scores, labels, offset=offset)
        ref = naive_score_voting(det, det_labels, boxes, scores, labels, offset=offset)
        torch.testing.assert_close(voted, ref, rtol=1e-12, atol=1e-9)
        assert torch.equal(voted[:3], det[:3])


def test_single_candidate_is_identity():
    box = torch.tensor([[10.0, 20.0, 50.5, 80.0]])
    out = score_voting(box, torch.tensor([3]), box.clone(), torch.tensor([0.7]), torch.tensor([3]))
    assert torch.equal(out, box)
    # a far candidate (IoU ≤ 0.01) or one of another class does not vote
    far = torch.tensor([[200.0, 200.0, 260.0, 260.0], [11.0, 21.0, 51.0, 81.0]])
    out = score_voting(
        box, torch.tensor([3]), torch.cat((box, far)), torch.tensor([0.7, 0.9, 0.9]),
        torch.tensor([3, 3, 4]),
    )
    assert torch.equal(out, box)


@pytest.mark.parametrize("k,n", [(0, 5), (3, 0), (0, 0)])
def test_empty_inputs(k, n):
    det = torch.rand(k, 4) * 10
    det[:, 2:] += 10
    cand = torch.rand(n, 4) * 10
    cand[:, 2:] += 10
    out = score_voting(
        det, torch.ones(k, dtype=torch.int64), cand, torch.rand(n), torch.ones(n, dtype=torch.int64)
    )
    assert out.shape == (k, 4)
    assert torch.equal(out, det)


def test_weights_follow_the_formula():
    det = torch.tensor([[0.0, 0.0, 9.0, 9.0]], dtype=torch.float64)  # 10×10 with +1
    cand = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 19.0]], dtype=torch.float64)  # IoU 1, .5
    s = torch.tensor([0.5, 0.8], dtype=torch.float64)
    w = s * torch.exp(-(1 - torch.tensor([1.0, 0.5], dtype=torch.float64)) ** 2 / 0.025)
    expected = (w[:, None] * cand).sum(0) / w.sum()
    out = score_voting(det, torch.tensor([1]), cand, s, torch.tensor([1, 1]))
    torch.testing.assert_close(out[0], expected, rtol=1e-14, atol=1e-12)
