"""The generated shapes dataset: determinism, COCO format, content statistics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from assigndet.data import CocoDetection, generate_shapes
from assigndet.data.shapes import main as shapes_main


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("shapes")
    info = generate_shapes(root, num_train=100, num_val=8, seed=0)
    return root, info


def test_deterministic(tmp_path):
    a = _files(Path(generate_shapes(tmp_path / "a", num_train=5, num_val=3, seed=7)["root"]))
    b = _files(Path(generate_shapes(tmp_path / "b", num_train=5, num_val=3, seed=7)["root"]))
    c = _files(Path(generate_shapes(tmp_path / "c", num_train=5, num_val=3, seed=8)["root"]))
    assert len(a) == 5 + 3 + 2
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_coco_format(shapes):
    root, info = shapes
    pycocotools = pytest.importorskip("pycocotools.coco")
    import torchvision

    for split, n in (("train", 100), ("val", 8)):
        s = info[split]
        assert s["num_images"] == n and Path(s["ann_file"]) == root / "annotations" / f"instances_{split}.json"
        coco = pycocotools.COCO(s["ann_file"])
        assert len(coco.imgs) == n and len(coco.anns) == s["num_annotations"]
        for img in coco.imgs.values():
            assert (root / split / img["file_name"]).is_file()
        tv = torchvision.datasets.CocoDetection(s["image_root"], s["ann_file"])
        image, anns = tv[0]
        assert image.size == (coco.imgs[tv.ids[0]]["width"], coco.imgs[tv.ids[0]]["height"])
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    cat_ids = [c["id"] for c in data["categories"]]
    assert len(cat_ids) >= 6
    assert cat_ids != list(range(1, len(cat_ids) + 1))  # not contiguous on purpose
    for ann in data["annotations"]:
        assert set(ann) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
        x, y, w, h = ann["bbox"]
        img = next(i for i in data["images"] if i["id"] == ann["image_id"])
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1
        assert x + w <= img["width"] and y + h <= img["height"]
        assert 0 < ann["area"] <= w * h


def test_content_statistics(shapes):
    root, _ = shapes
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    images = {i["id"]: i for i in data["images"]}
    sides = [(i["width"], i["height"]) for i in data["images"]]
    assert all(160 <= w <= 320 and 160 <= h <= 320 for w, h in sides)
    assert any(h >= w for w, h in sides) and any(h < w for w, h in sides)
    used = {a["category_id"] for a in data["annotations"]}
    assert used == {c["id"] for c in data["categories"]}
    sizes = [max(a["bbox"][2:]) for a in data["annotations"]]
    rel = [max(a["bbox"][2:]) / min(images[a["image_id"]]["width"], images[a["image_id"]]["height"])
           for a in data["annotations"]]
    assert min(sizes) <= 12 and max(rel) >= 0.6
    with_objects = {a["image_id"] for a in data["annotations"]}
    assert 1 <= len(images) - len(with_objects) <= 15  # ~5 % empty
    per_image = torch.bincount(torch.tensor([a["image_id"] for a in data["annotations"]]))
    assert per_image.max() >= 3  # several (possibly overlapping) objects per image occur


def test_ids_map_through_dataset(shapes):
    root, _ = shapes
    ann_file = root / "annotations" / "instances_train.json"
    data = json.loads(ann_file.read_text())
    ds = CocoDetection(root / "train", ann_file, train=True)
    assert ds.category_ids == sorted(c["id"] for c in data["categories"])
    assert len(ds) == len({a["image_id"] for a in data["annotations"]})  # empty images filtered
    for index in (0, 5, len(ds) - 1):
        image, target = ds[index]
        img = next(i for i in data["images"] if i["id"] == target["image_id"])
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, img["height"], img["width"])
        anns = [a for a in data["annotations"] if a["image_id"] == target["image_id"]]
        assert ds.label_to_category_id(target["labels"]).tolist() == [a["category_id"] for a in anns]
        expected = [[x, y, x + w - 1, y + h - 1] for x, y, w, h in (a["bbox"] for a in anns)]
        assert target["boxes"].tolist() == expected


def test_main(tmp_path, capsys):
    assert shapes_main(["--out", str(tmp_path), "--train", "2", "--val", "1", "--seed", "3"]) == 0
    assert (tmp_path / "annotations" / "instances_val.json").is_file()
    assert "train: 2 images" in capsys.readouterr().out
