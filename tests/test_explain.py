"""``assigndet explain``: the page opens in headless Chromium with every figure loaded and one table
row per GT; the numbers of explain.json are the assigners' own; bad inputs are one-line errors."""
import json
import shutil
import uuid

import pytest
import torch

from assigndet.assign import atss_assign, dynamic_atss_assign, paa_assign
from assigndet.cli import main
from assigndet.data import generate_shapes
from assigndet.detectors import build_model
from assigndet.detectors.common import atss_anchors_per_location
from assigndet.explain.assigners import head_outputs
from assigndet.presets import load_config
from conftest import TINY_OVERRIDES

pytestmark = pytest.mark.usefixtures("one_thread")

PRESET = "paa_R_18_shapes"
#: the tiny test model, for the seven classes of the shapes dataset
OVERRIDES = TINY_OVERRIDES + ["model.num_classes=7"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=2, num_val=1)
    return root


@pytest.fixture(scope="module")
def explained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain")
    assert main(["explain", PRESET, "--dataset", str(shapes), "--image-id", "1", "--out", str(out), *OVERRIDES]) == 0
    return out, json.loads((out / "explain.json").read_text())


def _chromium(tmp_path):
    """A headless Chromium through chromedriver: missing ones FAIL the test (CI installs them)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install selenium (the dev extra)", pytrace=False)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("headless Chromium is needed: apt-get install -y chromium chromium-driver "
                    f"(found browser={browser}, chromedriver={driver})", pytrace=False)
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / ('chromium-' + uuid.uuid4().hex)}"]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_index_html_in_headless_chromium_loads_every_figure_and_has_one_row_per_gt(explained, tmp_path):
    out, report = explained
    num_gts = len(report["gts"])
    assert num_gts >= 1
    browser = _chromium(tmp_path)
    try:
        browser.set_page_load_timeout(30)
        browser.get((out / "index.html").resolve().as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
        rows = browser.execute_script("return document.querySelectorAll('table#gts tbody tr').length;")
    finally:
        browser.quit()
    assert len(images) == num_gts + 1  # the overview and one figure per GT
    assert all(done and width > 0 for _, done, width in images), images
    assert rows == num_gts
    assert {src for src, _, _ in images} == set(report["figures"].values())


def test_json_numbers_are_those_of_the_assigners_on_the_same_head(explained, shapes):
    """explain.json against the training-path calls (no details) on the same model and image."""
    _, report = explained
    cfg = load_config(PRESET, OVERRIDES)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).eval()
    from assigndet.data import CocoDetection
    ds = CocoDetection(shapes / "val", shapes / "annotations" / "instances_val.json", train=False)
    image, target = ds[ds.image_ids.index(1)]
    h = head_outputs(model, image, target["boxes"], target["labels"])
    assert report["input_size"] == list(h.image.shape[1:]) and report["num_anchors_per_level"] == h.num_per_level
    a = atss_anchors_per_location(cfg.model, model.anchor_generator.num_anchors_per_location)
    matched = {
        "atss": atss_assign(h.anchors, h.num_per_level, h.boxes, topk=cfg.model.topk, num_anchors_per_location=a),
        "paa": paa_assign(h.anchors, h.num_per_level, h.boxes, h.labels, h.logits, h.deltas, topk=cfg.model.topk),
        "dynamic_atss": dynamic_atss_assign(h.anchors, h.num_per_level, h.boxes, model.coder.decode(h.deltas, h.anchors),
                                            topk=cfg.model.topk, num_anchors_per_location=a)[0],
    }
    for g in report["gts"]:
        for m, mt in matched.items():
            want = (mt == g["index"]).nonzero().squeeze(1).tolist()
            assert g[m]["positive_anchors"] == want, (m, g["index"])
            assert sum(g[m]["per_level"].values()) == g[m]["positives"] == len(want)
        atss = g["atss"]
        ious = torch.tensor(atss["candidate_iou"])
        assert atss["threshold"] == pytest.approx(float(ious.mean() + ious.std()), rel=1e-5)
        paa = g["paa"]
        if paa["gmm_fitted"]:
            assert sum(paa["gmm_weights"]) == pytest.approx(1.0)
            assert paa["candidate_scores"] == sorted(paa["candidate_scores"])
            assert paa["cut_score"] == paa["candidate_scores"][paa["cut_index"]]


def _run(capsys, *args) -> tuple[int, str]:
    rc = main(["explain", PRESET, *args, *OVERRIDES])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def _image(shapes):
    return str(next((shapes / "val").iterdir()))


def test_boxes_file_in_corner_and_coco_form_with_class_names(shapes, tmp_path, capsys):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"boxes": [{"box": [10, 12, 60, 70], "label": "star"},
                                           {"bbox": [80, 40, 30, 20], "label": 2},
                                           {"box": [30, 30, 31.5, 31.5]}]}))  # tiny, inside the first: label 0
    out = tmp_path / "out"
    rc, err = _run(capsys, _image(shapes), "--boxes", str(boxes), "--out", str(out), f"data.root={shapes}")
    assert rc == 0, err
    report = json.loads((out / "explain.json").read_text())
    # offset 1: x2 = x + w - 1
    assert [g["box_image"] for g in report["gts"]] == [[10, 12, 60, 70], [80, 40, 109, 59], [30, 30, 31.5, 31.5]]
    # class names from the config's validation annotations: circle, rectangle, triangle, star, ...
    assert [g["label"] for g in report["gts"]] == [3, 2, 0]
    assert [g["class_name"] for g in report["gts"]] == ["star", "triangle", "circle"]
    for g in report["gts"]:  # a positive is a candidate above the threshold with its centre inside the GT
        for m in ("atss", "dynamic_atss"):
            r = g[m]
            ok = {a for a, up, inside in zip(r["candidates"], r["candidate_above_threshold"],
                                             r["candidate_centre_inside"]) if up and inside}
            assert set(r["positive_anchors"]) <= ok
    assert sorted(report["figures"].values()) == sorted(p.name for p in out.glob("*.png"))


@pytest.mark.parametrize("content, words", [
    ("[{\"box\": [1, 2, 3]", "not valid JSON"),
    ("[{\"box\": [1, 2, 3]}]", "must be a list of 4 numbers"),
    ("[{\"box\": [10, 10, 5000, 40]}]", "lies outside the"),
    ("[{\"box\": [10, 10, 40, 40], \"label\": 99}]", "label 99 outside"),
    ("[{\"box\": [10, 10, 40, 40], \"label\": \"zebra\"}]", "unknown class name 'zebra'"),
    ("[]", "non-empty list"),
])
def test_bad_boxes_file_is_one_line_naming_it(shapes, tmp_path, capsys, content, words):
    boxes = tmp_path / "b.json"
    boxes.write_text(content)
    rc, err = _run(capsys, _image(shapes), "--boxes", str(boxes), "--out", str(tmp_path / "o"))
    assert rc == 2 and err.startswith("assigndet: error: ") and words in err and "b.json" in err, err


def test_unknown_image_id_unreadable_image_and_missing_pieces_are_one_line(shapes, tmp_path, capsys):
    rc, err = _run(capsys, "--dataset", str(shapes), "--image-id", "12345", "--out", str(tmp_path / "o"))
    assert rc == 2 and "image id 12345 is not in" in err, err
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    boxes = tmp_path / "b.json"
    boxes.write_text("[{\"box\": [1, 1, 5, 5]}]")
    rc, err = _run(capsys, str(bad), "--boxes", str(boxes), "--out", str(tmp_path / "o"))
    assert rc == 2 and "cannot read image" in err and "broken.jpg" in err, err
    rc, err = _run(capsys, _image(shapes), "--out", str(tmp_path / "o"))
    assert rc == 2 and "--boxes" in err, err
    rc = main(["explain", "faster_rcnn_R_18_shapes", _image(shapes), "--boxes", str(boxes), "--out", str(tmp_path)])
    assert rc == 2 and "two-stage" in capsys.readouterr().err
