"""CocoDetection (filtering, conventions, errors) and the samplers/loaders, on tiny handwritten data."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from assigndet.data import (CocoDetection, DatasetError, TrainBatchSampler, build_test_loader,
                            build_train_loader, collate)

# --------------------------------------------------------------------------- helpers

CATEGORIES = [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}, {"id": 40, "name": "forty"}]


def write_dataset(root: Path, images: list[tuple[int, int]], annotations: list[dict], *,
                  categories=CATEGORIES, paint=True) -> tuple[Path, Path]:
    """Images of (W, H) named img<k>.png with id k+1; annotation ids are assigned if missing.

    When ``paint``, every non-crowd box's pixels (COCO xywh, integer) are painted white on black.
    """
    image_root = root / "images"
    image_root.mkdir(parents=True, exist_ok=True)
    infos = []
    for k, (w, h) in enumerate(images):
        arr = np.zeros((h, w, 3), dtype=np.uint8)
        arr[..., 1] = np.arange(w, dtype=np.uint8)[None, :]  # a ramp so flips are visible
        if paint:
            for a in annotations:
                if a.get("image_id") == k + 1 and not a.get("iscrowd") and isinstance(a.get("bbox"), list):
                    x, y, bw, bh = (int(v) for v in a["bbox"])
                    arr[max(y, 0):y + bh, max(x, 0):x + bw, 0] = 255
        Image.fromarray(arr).save(image_root / f"img{k}.png")
        infos.append({"id": k + 1, "file_name": f"img{k}.png", "width": w, "height": h})
    anns = [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)]
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": infos, "annotations": anns, "categories": categories}))
    return image_root, ann_file


def ann(image_id, bbox, category_id=2, **kw):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, **kw}


# --------------------------------------------------------------------------- dataset

def test_category_mapping(tmp_path):
    root, af = write_dataset(tmp_path, [(20, 10)], [ann(1, [1, 1, 4, 4], 40), ann(1, [5, 2, 3, 3], 7),
                                                     ann(1, [0, 0, 2, 2], 2)])
    ds = CocoDetection(root, af, train=True)
    assert ds.category_ids == [2, 7, 40] and ds.class_names == ["two", "seven", "forty"]
    image, target = ds[0]
    assert target["labels"].tolist() == [2, 1, 0] and target["labels"].dtype == torch.int64
    assert ds.label_to_category_id(target["labels"]).tolist() == [40, 7, 2]
    assert ds.label_to_category_id(torch.tensor([[0, 2]])).tolist() == [[2, 40]]


def test_training_filter_and_crowd(tmp_path):
    annotations = [
        ann(1, [1, 1, 5, 5]), ann(1, [2, 2, 6, 6], iscrowd=1),  # img0: normal + crowd
        # img1: no annotation at all
        ann(3, [0, 0, 8, 8], iscrowd=1),  # img2: crowd only
        ann(4, [3, 3, 1, 5]), ann(4, [1, 1, 6, 1]),  # img3: every box has w <= 1 or h <= 1
        ann(5, [3, 3, 1, 5]), ann(5, [4, 1, 3, 2]),  # img4: one thin box + one usable box
    ]
    root, af = write_dataset(tmp_path, [(12, 10)] * 5, annotations)
    train = CocoDetection(root, af, train=True)
    assert train.image_ids == [1, 5]
    _, t0 = train[0]
    assert t0["boxes"].tolist() == [[1, 1, 5, 5]]  # crowd box is not a target
    _, t4 = train[1]  # the 1-px-wide box has x2 == x1 with offset 1 and is removed (SPEC §1.2)
    assert t4["boxes"].tolist() == [[4, 1, 6, 2]]
    keep_all = CocoDetection(root, af, train=True, filter_empty=False)
    assert keep_all.image_ids == [1, 2, 3, 4, 5]
    assert keep_all[1][1]["boxes"].shape == (0, 4) and keep_all[2][1]["labels"].shape == (0,)
    test = CocoDetection(root, af, train=False)
    assert test.image_ids == [1, 2, 3, 4, 5] and len(test) == 5
    modern = CocoDetection(root, af, train=True, offset=0.0)
    assert modern[1][1]["boxes"].tolist() == [[3, 3, 4, 8], [4, 1, 7, 3]]  # 1-px box kept


def test_offset_conversion_and_clipping(tmp_path, caplog):
    annotations = [ann(1, [2, 3, 4, 5]), ann(1, [-2, 1, 5, 3]), ann(1, [8, 6, 5, 9]),
                   ann(1, [1.5, 2.5, 2.25, 0.5]), ann(1, [4, 4, 0, 3]), ann(1, [4, 4, 3, 0])]
    root, af = write_dataset(tmp_path, [(10, 8)], annotations, paint=False)
    with caplog.at_level(logging.INFO, logger="assigndet"):
        ds = CocoDetection(root, af, train=True)
    assert "3 degenerate" in caplog.text  # two zero-size boxes and one thinner than 1 px
    boxes = ds[0][1]["boxes"]
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[2, 3, 5, 7], [0, 1, 2, 3], [8, 6, 9, 7]]  # sub-pixel box removed too
    modern = CocoDetection(root, af, train=True, offset=0.0)
    assert modern[0][1]["boxes"].tolist() == [[2, 3, 6, 8], [0, 1, 3, 4], [8, 6, 10, 8],
                                              [1.5, 2.5, 3.75, 3.0]]


@pytest.mark.parametrize("offset", [1.0, 0.0])
def test_flip(tmp_path, offset):
    annotations = [ann(1, [1, 2, 3, 4]), ann(1, [6, 0, 5, 2], 7)]
    root, af = write_dataset(tmp_path, [(11, 6)], annotations)
    ds = CocoDetection(root, af, train=True, offset=offset)
    image, target = ds[0]
    fimage, ftarget = ds[(0, True)]
    assert torch.equal(fimage, image.flip(-1))
    W = 11
    expected = target["boxes"].clone()
    expected[:, 0] = W - target["boxes"][:, 2] - offset
    expected[:, 2] = W - target["boxes"][:, 0] - offset
    assert torch.equal(ftarget["boxes"], expected)
    assert torch.equal(ftarget["labels"], target["labels"])
    assert ftarget["orig_size"] == target["orig_size"] == (6, 11)
    if offset == 1.0:  # inclusive boxes cover exactly the painted pixels, before and after the flip
        for img, boxes in ((image, target["boxes"]), (fimage, ftarget["boxes"])):
            x1, y1, x2, y2 = boxes[0].long().tolist()
            assert (img[0, y1:y2 + 1, x1:x2 + 1] == 255).all()
            assert img[0, y1:y2 + 1, x2 + 1].lt(255).all() and img[0, y1:y2 + 1, x1 - 1].lt(255).all()
    assert ds[np.int64(0)][1]["image_id"] == 1 and ds[-1][1]["image_id"] == 1


def test_aspect_groups(tmp_path):
    sizes = [(20, 10), (10, 20), (15, 15), (16, 15)]
    root, af = write_dataset(tmp_path, sizes, [ann(k + 1, [1, 1, 4, 4]) for k in range(4)])
    ds = CocoDetection(root, af, train=True)
    assert ds.image_sizes == [(10, 20), (20, 10), (15, 15), (15, 16)]
    assert ds.aspect_ratios == [0.5, 2.0, 1.0, 15 / 16]
    assert ds.group_ids == [0, 1, 1, 0]


def _error(tmp_path, annotations=None, images=((12, 10),), **kw) -> str:
    root, af = write_dataset(tmp_path, list(images), annotations or [ann(1, [1, 1, 3, 3])], paint=False)
    with pytest.raises(DatasetError) as info:
        CocoDetection(root, af, train=True, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("bbox, words", [
    (None, ["bbox must be 4 numbers"]),
    ([1, 2, 3], ["bbox must be 4 numbers"]),
    ([1, 2, "3", 4], ["bbox must be 4 numbers"]),
    ([1, 2, -3, 4], ["negative size"]),
    ([1, 2, 3, -0.5], ["negative size"]),
    ([1, float("nan"), 3, 4], ["non-finite"]),
    ([1, 2, float("inf"), 4], ["non-finite"]),
    ([12, 2, 3, 4], ["entirely outside", "12x10"]),
    ([-5, 2, 5, 4], ["entirely outside"]),
    ([2, 10.5, 3, 4], ["entirely outside"]),
])
def test_bad_boxes(tmp_path, bbox, words):
    a = ann(1, bbox)
    if bbox is None:
        del a["bbox"]
    msg = _error(tmp_path, [ann(1, [1, 1, 3, 3]), a])
    assert "ann.json" in msg and "annotation id 2" in msg and "img0.png" in msg
    for w in words:
        assert w in msg


def test_crowd_box_outside_is_not_an_error(tmp_path):
    root, af = write_dataset(tmp_path, [(12, 10)], [ann(1, [1, 1, 3, 3]), ann(1, [50, 50, 3, 3], iscrowd=1)])
    assert len(CocoDetection(root, af, train=True)[0][1]["boxes"]) == 1


def test_bad_files(tmp_path):
    root, af = write_dataset(tmp_path, [(12, 10)], [ann(1, [1, 1, 3, 3])])
    with pytest.raises(DatasetError, match="annotation file not found: .*nope.json"):
        CocoDetection(root, tmp_path / "nope.json", train=True)
    with pytest.raises(DatasetError, match="image_root is not a directory: .*nodir"):
        CocoDetection(tmp_path / "nodir", af, train=True)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [],\n "annotations": [}')
    with pytest.raises(DatasetError, match=r"bad.json: malformed JSON at line 2 column 18"):
        CocoDetection(root, bad, train=True)
    bad.write_text('[1, 2]')
    with pytest.raises(DatasetError, match=r"bad.json: top level must be a JSON object"):
        CocoDetection(root, bad, train=True)
    bad.write_text('{"images": [], "categories": []}')
    with pytest.raises(DatasetError, match=r"bad.json: missing or non-list 'annotations'"):
        CocoDetection(root, bad, train=True)


def test_bad_entries(tmp_path):
    msg = _error(tmp_path / "a", [ann(1, [1, 1, 3, 3], category_id=3)])
    assert "annotation id 1" in msg and "img0.png" in msg and "unknown category_id 3" in msg
    msg = _error(tmp_path / "b", [ann(9, [1, 1, 3, 3])])
    assert "annotation id 1" in msg and "unknown image_id 9" in msg
    root, af = write_dataset(tmp_path / "c", [(12, 10)], [ann(1, [1, 1, 3, 3])])
    data = json.loads(af.read_text())
    data["images"][0]["width"] = 0
    af.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"ann.json: image img0.png \(id 1\) has an invalid 'width': 0"):
        CocoDetection(root, af, train=True)
    data["images"][0]["width"] = 12
    data["images"].append(dict(data["images"][0]))
    af.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="duplicate image id 1"):
        CocoDetection(root, af, train=True)


def test_bad_images_lazy(tmp_path):
    annotations = [ann(k + 1, [1, 1, 3, 3]) for k in range(4)]
    root, af = write_dataset(tmp_path, [(12, 10), (12, 10), (12, 10), (12, 10)], annotations)
    (root / "img1.png").unlink()
    (root / "img2.png").write_bytes(b"\x89PNG garbage")
    Image.new("RGB", (13, 10)).save(root / "img3.png")
    ds = CocoDetection(root, af, train=True)  # images are checked lazily
    assert ds[0][1]["image_id"] == 1
    with pytest.raises(DatasetError, match=r"cannot read image .*img1.png \(image id 2\)"):
        ds[1]
    with pytest.raises(DatasetError, match=r"cannot read image .*img2.png \(image id 3\)"):
        ds[2]
    with pytest.raises(DatasetError, match=r"image .*img3.png \(image id 4\) is 13x10 but ann.json says 12x10"):
        ds[3]


def test_skip_corrupt(tmp_path, caplog):
    annotations = [ann(k + 1, [1, 1, 3, 3]) for k in range(4)]
    root, af = write_dataset(tmp_path, [(12, 10)] * 4, annotations)
    (root / "img1.png").unlink()
    (root / "img2.png").write_bytes(b"not an image")
    ds = CocoDetection(root, af, train=True, skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="assigndet"):
        image, target = ds[(1, True)]
    assert target["image_id"] == 4 and ds.num_skipped == 2  # replaced by the next readable one
    assert "img1.png" in caplog.text and "img2.png" in caplog.text
    assert ds[2][1]["image_id"] == 4 and ds.num_skipped == 2  # known-bad images are not retried
    assert ds[0][1]["image_id"] == 1


# --------------------------------------------------------------------------- sampler

GROUPS = [0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0]  # 7 x group 0, 6 x group 1


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_deterministic_and_grouped():
    kw = dict(batch_size_per_rank=4, seed=5)
    a = take(TrainBatchSampler(GROUPS, **kw), 20)
    assert a == take(TrainBatchSampler(GROUPS, **kw), 20)
    assert a != take(TrainBatchSampler(GROUPS, batch_size_per_rank=4, seed=6), 20)
    for batch in a:
        assert len(batch) == 4
        assert len({GROUPS[i] for i, _ in batch}) == 1
        assert all(isinstance(i, int) and isinstance(f, bool) for i, f in batch)
    mixed = take(TrainBatchSampler(GROUPS, aspect_grouping=False, **kw), 20)
    assert any(len({GROUPS[i] for i, _ in b}) == 2 for b in mixed)


def test_sampler_epochs_cover_everything():
    s = TrainBatchSampler(GROUPS, batch_size_per_rank=4, seed=1)
    assert s.batches_per_epoch == 2 + 2  # ceil(7 / 4) + ceil(6 / 4)
    for epoch in range(3):
        seen = {i for b in s.epoch_batches(epoch) for i, _ in b}
        assert seen == set(range(len(GROUPS)))
    assert s.epoch_batches(0) != s.epoch_batches(1)
    tiny = take(TrainBatchSampler([0, 0], batch_size_per_rank=3, seed=0), 3)  # N < batch size
    assert all(len(b) == 3 for b in tiny)


def test_sampler_flips():
    never = take(TrainBatchSampler(GROUPS, batch_size_per_rank=2, hflip_prob=0.0), 30)
    always = take(TrainBatchSampler(GROUPS, batch_size_per_rank=2, hflip_prob=1.0), 30)
    half = take(TrainBatchSampler(GROUPS, batch_size_per_rank=2, hflip_prob=0.5), 100)
    assert not any(f for b in never for _, f in b) and all(f for b in always for _, f in b)
    assert 70 < sum(f for b in half for _, f in b) < 130
    # The flips do not change which images are drawn.
    assert [[i for i, _ in b] for b in never] == [[i for i, _ in b] for b in always]


@pytest.mark.parametrize("aspect_grouping", [True, False])
def test_sampler_ranks_equal_single_process(aspect_grouping):
    kw = dict(seed=3, aspect_grouping=aspect_grouping, hflip_prob=0.5)
    single = take(TrainBatchSampler(GROUPS, batch_size_per_rank=4, **kw), 25)
    r0 = take(TrainBatchSampler(GROUPS, batch_size_per_rank=2, world_size=2, rank=0, **kw), 25)
    r1 = take(TrainBatchSampler(GROUPS, batch_size_per_rank=2, world_size=2, rank=1, **kw), 25)
    assert [a + b for a, b in zip(r0, r1)] == single
    quarters = [take(TrainBatchSampler(GROUPS, batch_size_per_rank=1, world_size=4, rank=r, **kw), 25)
                for r in range(4)]
    assert [sum(parts, []) for parts in zip(*quarters)] == single


def test_sampler_start_iter():
    fresh = take(TrainBatchSampler(GROUPS, batch_size_per_rank=2, world_size=2, rank=1, seed=9), 40)
    for k in (0, 1, 3, 4, 17, 39):  # 4 batches per epoch: crosses several epoch boundaries
        resumed = TrainBatchSampler(GROUPS, batch_size_per_rank=2, world_size=2, rank=1, seed=9, start_iter=k)
        assert take(resumed, 40 - k) == fresh[k:]


def test_sampler_draws_scales_from_seed_and_iteration_same_in_any_number_of_ranks():
    kw = dict(seed=3, hflip_prob=0.5, min_size_train=[64, 96])
    single = take(TrainBatchSampler(GROUPS, batch_size_per_rank=4, **kw), 25)
    assert all(len(item) == 3 and 64 <= item[2] <= 96 for b in single for item in b)
    assert len({item[2] for b in single for item in b}) > 10
    halves = [take(TrainBatchSampler(GROUPS, batch_size_per_rank=2, world_size=2, rank=r, **kw), 25) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == single
    assert take(TrainBatchSampler(GROUPS, batch_size_per_rank=4, start_iter=7, **kw), 18) == single[7:]
    plain = take(TrainBatchSampler(GROUPS, batch_size_per_rank=4, seed=3, hflip_prob=0.5), 25)
    assert [[(i, f) for i, f, _ in b] for b in single] == plain  # images and flips unchanged by the scales
    assert take(TrainBatchSampler(GROUPS, batch_size_per_rank=4, seed=3, min_size_train=[80, 80]), 1)[0][0][2:] == ()


def test_train_loader_puts_the_drawn_short_side_in_the_target(small_dataset):
    loader = build_train_loader(small_dataset, batch_size_per_rank=2, num_workers=0, seed=4, min_size_train=[64, 96])
    expected = TrainBatchSampler(small_dataset.group_ids, batch_size_per_rank=2, seed=4,
                                 min_size_train=[64, 96]).global_batch(0)
    _, targets = next(iter(loader))
    assert [t["min_size"] for t in targets] == [s for _, _, s in expected]


def test_sampler_bad_arguments():
    with pytest.raises(ValueError):
        TrainBatchSampler([], batch_size_per_rank=1)
    with pytest.raises(ValueError):
        TrainBatchSampler(GROUPS, batch_size_per_rank=2, world_size=2, rank=2)
    with pytest.raises(ValueError):
        TrainBatchSampler(GROUPS, batch_size_per_rank=2, hflip_prob=1.5)
    with pytest.raises(ValueError, match="min_size_train"):
        TrainBatchSampler(GROUPS, batch_size_per_rank=2, min_size_train=[96, 64])


# --------------------------------------------------------------------------- loaders

@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    sizes = [(24, 16), (16, 24), (20, 20), (30, 12), (12, 30), (18, 17), (17, 18)]
    annotations = [ann(k + 1, [k, 1, 5, 4 + k % 3], [2, 7, 40][k % 3]) for k in range(len(sizes))]
    image_root, af = write_dataset(root, sizes, annotations)
    return CocoDetection(image_root, af, train=True)


def _same(batch_a, batch_b):
    (ia, ta), (ib, tb) = batch_a, batch_b
    assert len(ia) == len(ib)
    for x, y in zip(ia, ib):
        assert torch.equal(x, y)
    for x, y in zip(ta, tb):
        assert x.keys() == y.keys() and x["image_id"] == y["image_id"]
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])


def test_train_loader_workers_agree(small_dataset):
    kw = dict(batch_size_per_rank=2, seed=4, start_iter=3)
    a = take(build_train_loader(small_dataset, num_workers=0, **kw), 6)
    b = take(build_train_loader(small_dataset, num_workers=2, **kw), 6)
    for x, y in zip(a, b):
        _same(x, y)
    images, targets = a[0]
    sampler = TrainBatchSampler(small_dataset.group_ids, batch_size_per_rank=2, seed=4)
    expected = sampler.global_batch(3)
    assert [t["image_id"] for t in targets] == [small_dataset.image_ids[i] for i, _ in expected]
    for img, t, (i, flip) in zip(images, targets, expected):
        ref_img, ref_t = small_dataset[(i, flip)]
        assert torch.equal(img, ref_img) and torch.equal(t["boxes"], ref_t["boxes"])
    groups = {small_dataset.group_ids[small_dataset.image_ids.index(t["image_id"])] for t in targets}
    assert len(groups) == 1


def test_test_loader_shards(small_dataset):
    n = len(small_dataset)
    full = [t["image_id"] for _, ts in build_test_loader(small_dataset, batch_size=3, num_workers=0) for t in ts]
    assert full == small_dataset.image_ids
    shards = [[t["image_id"] for _, ts in build_test_loader(small_dataset, batch_size=2, num_workers=0,
                                                            world_size=3, rank=r) for t in ts]
              for r in range(3)]
    assert shards == [small_dataset.image_ids[r::3] for r in range(3)]
    assert sum(map(len, shards)) == n
    loader = build_test_loader(small_dataset, batch_size=2, num_workers=2, world_size=2, rank=1)
    assert len(loader) == math.ceil(len(range(1, n, 2)) / 2)
    images, targets = next(iter(loader))
    assert torch.equal(images[0], small_dataset[1][0])  # no flips at test time


def test_collate():
    images, targets = collate([(torch.zeros(3, 2, 2), {"a": 1}), (torch.ones(3, 4, 1), {"a": 2})])
    assert isinstance(images, list) and [t["a"] for t in targets] == [1, 2]
