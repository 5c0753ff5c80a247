"""``assigndet browse``: the shapes layout, COCO's layout, explicit files, one-line errors."""
import json
import shutil

import pytest

from assigndet.cli import main
from assigndet.data import generate_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("browse") / "shapes"
    generate_shapes(root, num_train=6, num_val=3)
    return root


def test_browse_shapes_writes_drawings_charts_summary_and_index(shapes, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["browse", str(shapes), "--out", str(out), "--n", "2", "--split", "train"]) == 0
    printed = capsys.readouterr().out
    ann = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    assert f"6 images, {len(ann['annotations'])} boxes" in printed and "circle" in printed
    assert len(list((out / "images").glob("*.jpg"))) == 2
    for name in ("class_counts.png", "box_sizes.png", "index.html", "summary.json"):
        assert (out / name).stat().st_size > 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 6 and set(summary["boxes_per_class"]) == {c["name"] for c in ann["categories"]}


def test_browse_finds_coco_layout_and_takes_explicit_files(shapes, tmp_path):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    shutil.copytree(shapes / "val", coco / "val2017")
    shutil.copy(shapes / "annotations" / "instances_val.json", coco / "annotations" / "instances_val2017.json")
    assert main(["browse", str(coco), "--out", str(tmp_path / "o1"), "--n", "1"]) == 0
    assert json.loads((tmp_path / "o1" / "summary.json").read_text())["num_images"] == 3
    assert main(["browse", str(coco), "--out", str(tmp_path / "o2"), "--n", "1",
                 "--ann", "annotations/instances_val2017.json", "--images", "val2017"]) == 0


def test_browse_errors_are_one_line_naming_the_path(tmp_path, capsys):
    assert main(["browse", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset directory not found" in err[0] and "nowhere" in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["browse", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "pass --ann FILE --images DIR" in capsys.readouterr().err
