"""A corpus of broken COCO datasets: each one fails the loader with its expected one-line
DatasetError (before training: annotation file, ids, boxes, files exist; while training: an
unreadable image, also from a DataLoader worker) and is reported by ``data check`` as an error
of the expected kind."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from assigndet.data import CocoDetection, DatasetError, build_train_loader, check_files
from assigndet.data.check import ERROR, check_dataset, check_split

SIZE = (16, 12)  # W, H


def make_dataset(root: Path, num_images: int = 3) -> tuple[Path, Path, dict]:
    """``root/annotations/instances_train.json`` with ``root/train/img<k>.jpg``: one box per image."""
    images = root / "train"
    images.mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    for k in range(num_images):
        Image.fromarray(rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)).save(images / f"img{k}.jpg")
    data = {"images": [{"id": k + 1, "file_name": f"img{k}.jpg", "width": SIZE[0], "height": SIZE[1]}
                       for k in range(num_images)],
            "annotations": [{"id": 10 + k, "image_id": k + 1, "category_id": 3, "bbox": [2, 2, 6, 5], "iscrowd": 0}
                            for k in range(num_images)],
            "categories": [{"id": 3, "name": "three"}, {"id": 5, "name": "five"}]}
    return images, write(root, data), data


def write(root: Path, data) -> Path:
    ann = root / "annotations" / "instances_train.json"
    ann.write_text(data if isinstance(data, str) else json.dumps(data))
    return ann


def _set(data, path, value):
    *keys, last = path
    for k in keys:
        data = data[k]
    data[last] = value


# name -> (how to break the dataset, words of the loader's one-line error, data check's kind)
JSON_CASES = {
    "bad JSON with its position": (lambda r, d: write(r, '{"images": [],\n "annotations": [}'),
                                   ["instances_train.json", "malformed JSON at line 2 column 18"], "annotation file"),
    "top level not an object": (lambda r, d: write(r, "[1, 2]"), ["top level must be a JSON object"],
                                "annotation file"),
    "categories not a list": (lambda r, d: (_set(d, ["categories"], {"id": 3}), write(r, d)),
                              ["missing or non-list 'categories'"], "annotation file"),
    "width of the wrong type": (lambda r, d: (_set(d, ["images", 1, "width"], "16"), write(r, d)),
                                ["image img1.jpg (id 2) has an invalid 'width': '16'"], "image entry"),
    "image id not an integer": (lambda r, d: (_set(d, ["images", 1, "id"], "2"), write(r, d)),
                                ["image #1 has no integer 'id'"], "image entry"),
    "duplicate image id": (lambda r, d: (_set(d, ["images", 2, "id"], 1), write(r, d)), ["duplicate image id 1"],
                           "duplicate id"),
    "duplicate annotation id": (lambda r, d: (_set(d, ["annotations", 2, "id"], 10), write(r, d)),
                                ["duplicate annotation id 10"], "duplicate id"),
    "duplicate category id": (lambda r, d: (_set(d, ["categories", 1, "id"], 3), write(r, d)),
                              ["duplicate category id 3"], "duplicate id"),
    "unknown category": (lambda r, d: (_set(d, ["annotations", 1, "category_id"], 4), write(r, d)),
                         ["annotation id 11 (image img1.jpg)", "unknown category_id 4"], "unknown category"),
    "annotation of a missing image": (lambda r, d: (_set(d, ["annotations", 1, "image_id"], 9), write(r, d)),
                                      ["annotation id 11 refers to unknown image_id 9"], "unknown image"),
    "bbox of the wrong type": (lambda r, d: (_set(d, ["annotations", 0, "bbox"], "2 2 6 5"), write(r, d)),
                               ["annotation id 10 (image img0.jpg)", "bbox must be 4 numbers"], "bad bbox"),
    "NaN box": (lambda r, d: (_set(d, ["annotations", 0, "bbox"], [2, float("nan"), 6, 5]), write(r, d)),
                ["annotation id 10", "non-finite"], "non-finite bbox"),
    "Inf box": (lambda r, d: (_set(d, ["annotations", 0, "bbox"], [2, 2, float("inf"), 5]), write(r, d)),
                ["annotation id 10", "non-finite"], "non-finite bbox"),
    "negative box": (lambda r, d: (_set(d, ["annotations", 2, "bbox"], [2, 2, -6, 5]), write(r, d)),
                     ["annotation id 12 (image img2.jpg)", "negative size"], "negative bbox"),
    "box outside the image": (lambda r, d: (_set(d, ["annotations", 0, "bbox"], [20, 2, 6, 5]), write(r, d)),
                              ["annotation id 10", "entirely outside the 16x12 image"], "bbox outside image"),
    "empty split": (lambda r, d: write(r, {"images": [], "annotations": [], "categories": d["categories"]}),
                    ["no training images", "the file lists no images"], "empty split"),
    "empty after filtering": (lambda r, d: (_set(d, ["annotations"], [dict(a, bbox=[2, 2, 1, 5]) for a in
                                                                        d["annotations"]]), write(r, d)),
                              ["no training images left: all 3 images have no usable annotation",
                               "data.filter_empty=false"], "empty split"),
}


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_broken_annotation_file_is_one_line_error_and_a_data_check_error(tmp_path, case):
    breaks, words, kind = JSON_CASES[case]
    images, ann, data = make_dataset(tmp_path)
    breaks(tmp_path, data)
    with pytest.raises(DatasetError) as info:
        CocoDetection(images, ann, train=True)
    msg = str(info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    (report,) = check_dataset(tmp_path, progress=False)
    if case == "empty after filtering":  # 1-px boxes are fine for data check (evaluation keeps them)
        return
    assert (ERROR, kind) in report.findings, report.findings
    assert all(w in report.findings[(ERROR, kind)][1] for w in words[-1:])


def test_missing_annotation_file_and_image_folder(tmp_path):
    with pytest.raises(DatasetError, match="annotation file not found: .*nope.json"):
        CocoDetection(tmp_path, tmp_path / "nope.json", train=True)
    assert (ERROR, "annotation file") in check_split(tmp_path / "nope.json", tmp_path, progress=False).findings
    images, ann, _ = make_dataset(tmp_path / "d")
    (report,) = check_dataset(tmp_path / "d", ann=ann, images=tmp_path / "elsewhere", progress=False)
    assert (ERROR, "image folder") in report.findings
    with pytest.raises(DatasetError, match="no annotation files"):
        check_dataset(tmp_path / "d" / "train", progress=False)


def _corrupt(images: Path) -> None:
    (images / "img1.jpg").write_bytes(b"this is no image at all")


def _truncate(images: Path) -> None:
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(images / "big.jpg")
    data = (images / "big.jpg").read_bytes()
    (images / "img1.jpg").write_bytes(data[: len(data) // 2])


def test_missing_image_file_fails_before_training_or_is_skipped(tmp_path):
    images, ann, _ = make_dataset(tmp_path)
    (images / "img1.jpg").unlink()
    ds = CocoDetection(images, ann, train=True)  # construction reads no image
    with pytest.raises(DatasetError) as info:
        check_files(ds)  # what build_dataset does before the first iteration
    msg = str(info.value)
    assert "\n" not in msg and "1 of 3 image files missing" in msg and "img1.jpg (image id 2)" in msg
    assert "instances_train.json" in msg
    skipping = CocoDetection(images, ann, train=True, skip_corrupt=True)
    check_files(skipping)
    assert skipping.num_skipped == 1 and skipping[1][1]["image_id"] == 3
    (report,) = check_dataset(tmp_path, progress=False)
    assert report.findings[(ERROR, "missing image file")][0] == 1


@pytest.mark.parametrize("breaks, kind, words", [(_corrupt, "corrupt image", "cannot identify image file"),
                                                 (_truncate, "truncated image", "truncated")])
def test_unreadable_image_is_one_line_from_a_loader_worker_too(tmp_path, breaks, kind, words):
    images, ann, _ = make_dataset(tmp_path)
    breaks(images)
    ds = CocoDetection(images, ann, train=True)
    for workers in (0, 2):  # in a worker, torch would re-raise with the whole traceback as the message
        loader = build_train_loader(ds, batch_size_per_rank=3, num_workers=workers, aspect_grouping=False)
        with pytest.raises(DatasetError) as info:
            next(iter(loader))
        msg = str(info.value)
        assert msg.startswith("cannot read image") and "\n" not in msg and "Traceback" not in msg, msg
        assert "img1.jpg (image id 2)" in msg and words in msg
    (report,) = check_dataset(tmp_path, progress=False)
    assert report.findings[(ERROR, kind)][0] == 1 and "img1.jpg (image id 2)" in report.findings[(ERROR, kind)][1]


def test_data_check_decodes_with_worker_processes_and_counts_every_problem(tmp_path):
    images, ann, data = make_dataset(tmp_path, num_images=12)
    for k in (3, 7):
        (images / f"img{k}.jpg").write_bytes(b"garbage")
    Image.new("RGB", (17, 12)).save(images / "img5.jpg")
    data["annotations"][4]["bbox"] = [1, 1, 0, 4]  # zero size: dropped (warning)
    data["annotations"][6]["bbox"] = [10, 8, 10, 10]  # passes the border: clipped (warning)
    data["annotations"][8]["category_id"] = 99
    data["annotations"][9]["category_id"] = 98
    write(tmp_path, data)
    (report,) = check_dataset(tmp_path, workers=2, progress=False)
    f = {k: v[0] for k, v in report.findings.items()}
    assert f[(ERROR, "corrupt image")] == 2 and f[(ERROR, "size differs from JSON")] == 1
    assert f[(ERROR, "unknown category")] == 2
    assert f[("warning", "zero-size bbox")] == 1 and f[("warning", "bbox partly outside")] == 1
    assert report.num_images == 12


def test_degenerate_boxes_are_dropped_with_one_count_line(tmp_path, caplog):
    images, ann, data = make_dataset(tmp_path)
    data["annotations"] += [{"id": 20, "image_id": 1, "category_id": 3, "bbox": [4, 4, 0, 3]},
                            {"id": 21, "image_id": 1, "category_id": 5, "bbox": [4, 4, 3, 0]}]
    write(tmp_path, data)
    with caplog.at_level("WARNING", logger="assigndet"):
        ds = CocoDetection(images, ann, train=True)
    lines = [r.getMessage() for r in caplog.records if "degenerate" in r.getMessage()]
    assert len(lines) == 1 and "2 degenerate boxes" in lines[0] and "instances_train.json" in lines[0]
    boxes = ds[0][1]["boxes"]
    assert len(boxes) == 1 and bool((boxes[:, 2:] > boxes[:, :2]).all())


def test_build_dataset_checks_files_before_training(tmp_path):
    from assigndet.data import build_dataset

    images, ann, _ = make_dataset(tmp_path)
    (images / "img0.jpg").unlink()
    cfg = SimpleNamespace(data=SimpleNamespace(root=str(tmp_path), train_images="train",
                                               train_ann="annotations/instances_train.json", filter_empty=True,
                                               skip_corrupt=False), model=SimpleNamespace(offset=1.0))
    with pytest.raises(DatasetError, match=r"1 of 3 image files missing .* img0.jpg \(image id 1\)"):
        build_dataset(cfg, train=True)
