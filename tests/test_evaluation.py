import contextlib
import io
import json

import numpy as np
import pytest
import torch

from assigndet.checkpoints import save_weights
from assigndet.config import apply_overrides, config_to_yaml
from assigndet.errors import ConfigError
from assigndet.evaluation import (EXTRA_IOUS, PR_IOUS, STAT_KEYS, evaluate_coco, evaluate_coco_curves, format_ap,
                                  format_metrics, predictions_to_coco, weights_config, write_eval_json)
from assigndet.presets import load_config


def _synthetic(seed=0):
    """3 images, categories 3 ('cat') and 7 ('dog'), small/medium/large boxes, one crowd box."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in (1, 2, 5)]
    anns, dets = [], []
    aid = 1
    for img in images:
        for size in (20, 60, 150, 250):
            x, y = rng.uniform(0, 300), rng.uniform(0, 200)
            w, h = size * rng.uniform(0.7, 1.3), size * rng.uniform(0.7, 1.3)
            cat = int(rng.choice([3, 7]))
            anns.append({"id": aid, "image_id": img["id"], "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            aid += 1
            for _ in range(2):  # a good and a poor detection
                j = rng.normal(0, 0.1 * size, 4)
                dets.append({"image_id": img["id"], "category_id": cat,
                             "bbox": [x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)],
                             "score": float(rng.uniform(0.05, 1))})
        dets.append({"image_id": img["id"], "category_id": 3, "bbox": [500, 400, 30, 30], "score": 0.9})  # FP
    anns.append({"id": aid, "image_id": 1, "category_id": 7, "bbox": [400, 10, 200, 100], "area": 20000,
                 "iscrowd": 1})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    return gt, dets


def test_faster_coco_eval_matches_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, dets = _synthetic()
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))
    ours = evaluate_coco(str(ann), dets)

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(ann))
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ref = ev.stats
    assert len(ref) == 12
    for key, r in zip(STAT_KEYS, ref):
        assert abs(ours[key] - r) < 1e-6, (key, ours[key], r)
    assert ours["AP"] > 0.1
    # AP at single IoU thresholds, read from the precision array the same way
    p = ev.eval["precision"]
    for key, thr in EXTRA_IOUS.items():
        t = int(np.argmin(np.abs(ev.params.iouThrs - thr)))
        q = p[t, :, :, 0, -1]
        assert abs(ours[key] - q[q > -1].mean()) < 1e-6
    for k, name in enumerate(["cat", "dog"]):
        q = p[:, :, k, 0, -1]
        assert abs(ours["per_class"][name] - q[q > -1].mean()) < 1e-6
    assert format_metrics(ours).startswith("    AP")


def test_empty_detections_give_zero(tmp_path):
    gt, _ = _synthetic()
    m = evaluate_coco(gt, [])
    assert m["AP"] == 0 and m["AP50"] == 0 and m["AR"] == 0
    assert m["num_detections"] == 0
    assert set(m["per_class"]) == {"cat", "dog"}


def test_image_subset():
    gt, dets = _synthetic()
    m = evaluate_coco(gt, [d for d in dets if d["image_id"] == 1], image_ids=[1])
    assert m["num_images"] == 1 and m["AP"] > 0


def test_predictions_to_coco_offset_and_ids():
    preds = {7: {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "scores": torch.tensor([0.5]),
                 "labels": torch.tensor([1])},
             8: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}}
    res = predictions_to_coco(preds, [3, 9], offset=1.0)
    assert res == [{"image_id": 7, "category_id": 9, "bbox": [10.0, 20.0, 21.0, 41.0], "score": 0.5}]
    res0 = predictions_to_coco(preds, [3, 9], offset=0.0)
    assert res0[0]["bbox"] == [10.0, 20.0, 20.0, 40.0]
    with pytest.raises(ValueError):
        predictions_to_coco({1: {"boxes": torch.ones(1, 4), "scores": torch.ones(1), "labels": torch.tensor([2])}},
                            [3, 9])


def test_eval_json_keys(tmp_path):
    gt, dets = _synthetic()
    m = evaluate_coco(gt, dets)
    write_eval_json(tmp_path / "eval.json", m, iteration=5)
    obj = json.loads((tmp_path / "eval.json").read_text())
    for key in (*STAT_KEYS, *EXTRA_IOUS, "per_class", "iteration"):
        assert key in obj
    assert 0 <= obj["AP"] <= 1


def _pycocotools_eval(tmp_path, gt, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(ann))
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_pr_curves_are_pycocotools_precision_columns_and_their_mean_is_ap50_ap75(tmp_path):
    gt, dets = _synthetic()
    gt["categories"].append({"id": 9, "name": "bird"})  # a class without ground truth: no curve
    metrics, curves = evaluate_coco_curves(gt, dets)
    ev = _pycocotools_eval(tmp_path, gt, dets)
    p = ev.eval["precision"]  # (T, R, K, A, M)
    assert curves["recall"] == pytest.approx(list(ev.params.recThrs))
    for thr in PR_IOUS:
        t = int(np.argmin(np.abs(ev.params.iouThrs - thr)))
        at = curves["iou"][str(thr)]
        for k, name in enumerate(["cat", "dog"]):
            assert at["per_class"][name] == pytest.approx(p[t, :, k, 0, -1], abs=1e-5), (thr, name)
        assert at["per_class"]["bird"] is None
        assert at["mean"] == pytest.approx(p[t, :, :2, 0, -1].mean(axis=1), abs=1e-5)
    assert np.mean(curves["iou"]["0.5"]["mean"]) == pytest.approx(metrics["AP50"], abs=1e-5)
    assert np.mean(curves["iou"]["0.75"]["mean"]) == pytest.approx(metrics["AP75"], abs=1e-5)
    assert metrics == evaluate_coco(gt, dets)  # the same metrics as without the curves


def test_format_ap_prints_a_fraction_as_percent():
    assert format_ap(0.56923) == "AP 56.92 (%)"
    assert format_ap(0.5, "AP50") == "AP50 50.00 (%)"
    assert format_ap(-1.0, "APs") == "APs - (no ground truth)"


def test_weights_config_prefers_config_yaml_then_the_embedded_config_then_the_preset(tmp_path):
    embedded = apply_overrides(load_config("atss_R_18_shapes"), ["model.fpn_channels=24"])
    weights = save_weights({"w": torch.zeros(1)}, tmp_path / "w.safetensors",
                           metadata={"config": config_to_yaml(embedded)})
    assert weights_config(weights, preset="paa_R_18_shapes").model.fpn_channels == 24  # embedded beats the preset
    assert weights_config(weights, overrides=["model.head_convs=3"]).model.head_convs == 3
    beside = apply_overrides(embedded, ["model.fpn_channels=40"])
    (tmp_path / "config.yaml").write_text(config_to_yaml(beside))
    assert weights_config(weights).model.fpn_channels == 40  # a run directory's config.yaml comes first
    bare = save_weights({"w": torch.zeros(1)}, tmp_path / "other" / "bare.safetensors")
    assert weights_config(bare, preset="paa_R_18_shapes").model.arch.value == "paa"
    with pytest.raises(ConfigError, match="no config.yaml beside .*bare.safetensors.*--preset"):
        weights_config(bare)
    broken = save_weights({"w": torch.zeros(1)}, tmp_path / "other" / "broken.safetensors",
                          metadata={"config": "model: {arch: nosuch}"})
    with pytest.raises(ConfigError, match="the config stored in .*broken.safetensors"):
        weights_config(broken)
