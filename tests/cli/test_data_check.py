"""``assigndet data check`` (exit 0 clean or warnings only, 1 errors found, 2 nothing to check) and the
one-line errors of ``data shapes`` arguments."""
from __future__ import annotations

import json

import pytest

from assigndet.cli import main
from assigndet.data import generate_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("check") / "shapes"
    generate_shapes(root, num_train=6, num_val=3, min_side=32, max_side=48)
    return root


def test_clean_dataset_exits_0_with_a_table_of_every_split(shapes, capsys):
    assert main(["data", "check", str(shapes), "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["annotation", "file", "images", "boxes", "errors", "warnings"]
    assert lines[1].split()[:2] == ["annotations/instances_train.json", "6"]
    assert lines[2].split()[:2] == ["annotations/instances_val.json", "3"]
    assert out.rstrip().endswith("no errors in 2 split(s)")


def test_errors_exit_1_and_name_file_and_ids(shapes, tmp_path, capsys):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(shapes, root)
    (root / "val" / "val_000001.jpg").unlink()
    ann = root / "annotations" / "instances_train.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"][2] = -4
    ann.write_text(json.dumps(data))
    assert main(["data", "check", str(root), "--no-progress", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "negative bbox x1" in out and f"annotation id {data['annotations'][0]['id']}" in out
    assert "missing image file x1" in out and "val_000001.jpg (image id 2)" in out
    assert out.rstrip().endswith("2 error(s) in 2 split(s)")


def test_explicit_ann_and_images_relative_to_root(shapes, capsys):
    args = ["data", "check", str(shapes), "--ann", "annotations/instances_val.json", "--images", "val", "--no-progress"]
    assert main(args) == 0
    assert "annotations/instances_val.json" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["data", "check", "/nonexistent/ds"], "dataset root is not a directory: /nonexistent/ds"),
    (["data", "check", "--ann", "a.json"], "--ann and --images go together"),
    (["data", "check"], "give a dataset ROOT"),
    (["data", "shapes", "--out", "OUT", "--train", "-3"], "--train must be >= 0, got -3"),
    (["data", "shapes", "--out", "OUT", "--val", "-1"], "--val must be >= 0, got -1"),
    (["data", "shapes", "--out", "OUT", "--seed", "-2"], "--seed must be >= 0, got -2"),
    (["data", "shapes", "--out", "OUT", "--min-side", "400"],
     "--min-side 400 is larger than --max-side 320 (the default)"),
    (["data", "shapes", "--out", "OUT", "--min-side", "8", "--max-side", "9"], "--min-side must be >= 16"),
])
def test_bad_arguments_are_one_line_exit_2(tmp_path, capsys, args, words):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("assigndet: error: ") and words in err[0], err
    assert not (tmp_path / "out").exists()
