import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from assigndet.postprocess.iou_nms import iou_guided_nms
from assigndet.variants import IoURank
from conftest import load_fixture

MODES = {"rank": "iou", "weight": "score_iou", "none": "score"}


@pytest.mark.parametrize("prefix", list(MODES))
def test_fixture_cases(prefix):
    cases = load_fixture("iou_nms_cases.pt")
    for c in cases:
        keep, out_scores = iou_guided_nms(
            c["bboxes"], c["scores"], c["locs"], c["labels"],
            iou_threshold=c["iou_threshold"], score_threshold=c["score_thr"], rank_by=MODES[prefix],
        )
        msg = f"case {c['case_id']} {prefix}"
        assert keep.dtype == torch.int64
        assert torch.equal(keep, c[f"{prefix}_keep_rows"]), msg
        assert torch.equal(out_scores, c[f"{prefix}_scores"]), msg
        assert torch.equal(c["bboxes"][keep], c[f"{prefix}_bboxes"]), msg
        assert torch.equal(c["locs"][keep], c[f"{prefix}_locs"]), msg
        assert torch.equal(c["labels"][keep], c[f"{prefix}_labels"]), msg


def naive_iou_nms(boxes, scores, ious, labels, thr, score_thr, rank_by):
    """Loop reference: greedy NMS per class, clusters by first suppressor."""
    cand = [i for i in range(len(scores)) if scores[i] >= score_thr]
    key = {"iou": ious, "score_iou": scores * ious, "score": scores}[rank_by]
    order = sorted(cand, key=lambda i: -float(key[i]))
    iou = tv_box_iou(boxes, boxes)
    kept, cluster = [], {}
    for i in order:
        owner = next((k for k in kept if labels[k] == labels[i] and iou[k, i] > thr), None)
        if owner is None:
            kept.append(i)
            cluster[i] = [i]
        else:
            cluster[owner].append(i)
    if rank_by == "score":
        out = {k: float(scores[k]) for k in kept}
    else:
        # a suppressed box joins the first kept box (rank order) that overlaps it; kept boxes
        # ranked below it may overlap it too, but one ranked above it always exists
        out = {k: max(float(scores[j]) for j in cluster[k]) for k in kept}
    kept.sort(key=lambda k: -out[k])
    return kept, [out[k] for k in kept]


@pytest.mark.parametrize("rank_by", ["iou", "score_iou", "score"])
def test_matches_naive_loop(rank_by):
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        n = 60
        xy = torch.rand(n, 2, generator=g) * 100
        wh = torch.rand(n, 2, generator=g) * 40 + 5
        boxes = torch.cat((xy, xy + wh), dim=1)
        scores = torch.rand(n, generator=g)
        ious = torch.rand(n, generator=g)
        labels = torch.randint(0, 3, (n,), generator=g)
        keep, out = iou_guided_nms(
            boxes, scores, ious, labels, iou_threshold=0.3, score_threshold=0.1, rank_by=rank_by
        )
        ref_keep, ref_out = naive_iou_nms(boxes, scores, ious, labels, 0.3, 0.1, rank_by)
        assert keep.tolist() == ref_keep
        assert out.tolist() == pytest.approx(ref_out, abs=0)


def test_cluster_score_is_max_cls_score_of_suppressed():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]])
    scores = torch.tensor([0.3, 0.9, 0.5])
    ious = torch.tensor([0.9, 0.5, 0.7])
    labels = torch.tensor([0, 0, 0])
    keep, out = iou_guided_nms(boxes, scores, ious, labels)
    # box 0 ranks first by IoU and suppresses box 1: it inherits box 1's 0.9
    assert keep.tolist() == [0, 2]
    assert out.tolist() == pytest.approx([0.9, 0.5])
    keep, out = iou_guided_nms(boxes, scores, ious, labels, rank_by="score")
    assert keep.tolist() == [1, 2]
    assert out.tolist() == pytest.approx([0.9, 0.5])
    # other classes never suppress, score threshold is >=
    keep, out = iou_guided_nms(boxes, scores, ious, torch.tensor([0, 1, 0]), score_threshold=0.3)
    assert sorted(keep.tolist()) == [0, 1, 2]
    keep, _ = iou_guided_nms(boxes, scores, ious, labels, score_threshold=0.31)
    assert keep.tolist() == [1, 2]


@pytest.mark.parametrize("rank_by", ["iou", "score_iou", "score"])
def test_empty_inputs(rank_by):
    def run(boxes, scores, ious, labels):
        return iou_guided_nms(torch.tensor(boxes).view(-1, 4), torch.tensor(scores), torch.tensor(ious),
                              torch.tensor(labels, dtype=torch.long), rank_by=rank_by)

    keep, out = run([], [], [], [])
    assert keep.shape == (0,) and keep.dtype == torch.int64 and out.shape == (0,)
    keep, out = run([0.0, 0, 1, 1], [0.01], [0.5], [0])  # all below the score threshold
    assert keep.numel() == 0 and out.numel() == 0
    keep, out = run([0.0, 0, 1, 1], [0.5], [0.5], [0])  # one candidate
    assert keep.tolist() == [0] and out.tolist() == [0.5]


def test_rank_by_is_an_iou_rank_coerced_once():
    with pytest.raises(ValueError, match="expected one of: iou, score_iou, score"):
        iou_guided_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), torch.zeros(0).long(), rank_by="loc")
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(60, 2, generator=g) * 50
    boxes = torch.cat((xy, xy + 5 + torch.rand(60, 2, generator=g) * 30), dim=1)
    scores, ious, labels = torch.rand(60, generator=g), torch.rand(60, generator=g), torch.randint(0, 3, (60,), generator=g)
    for rank in IoURank:
        a = iou_guided_nms(boxes, scores, ious, labels, rank_by=rank)
        b = iou_guided_nms(boxes, scores, ious, labels, rank_by=rank.value)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
