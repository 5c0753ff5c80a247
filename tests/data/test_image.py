"""One reading rule for every image (training, evaluation, predict): transparency composited on
white, grayscale replicated, 16-bit scaled, EXIF orientation ignored; ``data check`` warns about
each of them saying what the loader does."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from assigndet.data import CocoDetection, DatasetError, read_rgb
from assigndet.data.check import WARNING, check_dataset


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 6, 4), dtype=np.uint8)  # black RGB everywhere
    arr[:, :2, 3] = 0  # transparent
    arr[:, 2:4, 3] = 255  # opaque black
    arr[:, 4:, :3] = 200
    arr[:, 4:, 3] = 128  # half transparent grey
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    img = read_rgb(tmp_path / "a.png")
    assert img.shape == (3, 4, 6) and img.dtype == torch.uint8
    assert (img[:, :, :2] == 255).all() and (img[:, :, 2:4] == 0).all()  # not the black a plain convert gives
    assert (img[:, :, 4:] == round((200 * 128 + 255 * 127) / 255)).all()


def test_palette_transparency_grayscale_alpha_and_16_bit(tmp_path):
    p = Image.new("P", (3, 2), 0)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png", transparency=0)
    img = read_rgb(tmp_path / "p.png")
    assert img[:, 0, 0].tolist() == [255, 255, 255] and img[:, 0, 1].tolist() == [10, 20, 30]
    Image.fromarray(np.array([[[40, 0], [40, 255]]], dtype=np.uint8), "LA").save(tmp_path / "la.png")
    assert read_rgb(tmp_path / "la.png")[:, 0].T.tolist() == [[255] * 3, [40] * 3]
    Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)).save(tmp_path / "g16.png")
    assert read_rgb(tmp_path / "g16.png")[:, 0].T.tolist() == [[0] * 3, [100] * 3, [255] * 3]  # not clipped


def test_dataset_reads_rgba_like_predict(tmp_path):
    arr = np.zeros((10, 12, 4), dtype=np.uint8)
    arr[2:6, 2:8] = [255, 0, 0, 255]
    (tmp_path / "im").mkdir()
    Image.fromarray(arr, "RGBA").save(tmp_path / "im" / "a.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 12, "height": 10}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 4]}],
                               "categories": [{"id": 1, "name": "red"}]}))
    image, _ = CocoDetection(tmp_path / "im", ann, train=True)[0]
    assert torch.equal(image, read_rgb(tmp_path / "im" / "a.png"))
    assert image[:, 0, 0].tolist() == [255, 255, 255] and image[:, 3, 3].tolist() == [255, 0, 0]


def test_unreadable_file_names_it(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DatasetError, match=r"cannot read image .*x.jpg: cannot identify image file"):
        read_rgb(tmp_path / "x.jpg")


def test_data_check_warns_about_each_conversion_and_exif(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.new("RGBA", (8, 8)).save(tmp_path / "train" / "rgba.png")
    Image.new("L", (8, 8)).save(tmp_path / "train" / "gray.png")
    Image.new("CMYK", (8, 8)).save(tmp_path / "train" / "cmyk.jpg")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(tmp_path / "train" / "g16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "rot.jpg", exif=exif)
    names = ["rgba.png", "gray.png", "cmyk.jpg", "g16.png", "rot.jpg"]
    data = {"images": [{"id": k + 1, "file_name": n, "width": 8, "height": 8} for k, n in enumerate(names)],
            "annotations": [{"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [1, 1, 4, 4]}
                            for k in range(len(names))],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(data))
    (report,) = check_dataset(tmp_path, progress=False)
    assert report.count("error") == 0
    found = {kind: first for (sev, kind), (_, first) in report.findings.items() if sev == WARNING}
    assert "composited on white" in found["transparency"] and "rgba.png" in found["transparency"]
    assert "copied to R, G and B" in found["grayscale"]
    assert "converted to RGB" in found["CMYK"] and "scaled to 8 bits" in found["16-bit"]
    assert "EXIF orientation 6 ignored" in found["EXIF orientation"]
