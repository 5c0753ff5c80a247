"""assigndet.viz: the plots of a run directory, the drawing of boxes, the dataset overview."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from assigndet.data import CocoDetection, generate_shapes
from assigndet.evaluation import evaluate_coco_curves, write_eval_json
from assigndet.viz import (DRAW_MIN_SIDE, class_color, dedup_for_drawing, draw_ground_truth, draw_predictions,
                           draw_side_by_side, load_run, run_labels, write_browse, write_plots, write_run_plots)
from assigndet.viz.plots import DPI, plot_loss_curve

pytestmark = pytest.mark.usefixtures("one_thread")


def _gt_and_dets(seed: int):
    """2 images, 2 classes, detections of varying quality (a non-trivial PR curve)."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 200, "height": 160, "file_name": f"{i}.jpg"} for i in (1, 2)]
    anns, dets = [], []
    for k in range(12):
        img, cat = 1 + k % 2, (3, 7)[k % 3 == 0]
        x, y, s = rng.uniform(0, 120), rng.uniform(0, 90), rng.uniform(10, 60)
        anns.append({"id": k + 1, "image_id": img, "category_id": cat, "bbox": [x, y, s, s], "area": s * s,
                     "iscrowd": 0})
        j = rng.normal(0, 0.15 * s, 2)
        dets.append({"image_id": img, "category_id": cat, "bbox": [x + j[0], y + j[1], s, s],
                     "score": float(rng.uniform(0.1, 1))})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    return gt, dets


def make_run(path, *, evals: int = 2, seed: int = 0, scale: float = 1.0):
    """A run directory as training writes it: metrics.jsonl (losses, an assignment statistic that
    is not a loss, timings), eval_history.jsonl, eval.json and pr_curves.json from the evaluator."""
    path.mkdir(parents=True, exist_ok=True)
    rows = [{"iteration": it, "loss_cls": scale * (1.0 / (1 + it)), "loss_reg": 0.5 * scale, "total": 0,
             "assign/pos_per_gt": 9.0, "lr": 0.01 * min(1.0, (it + 1) / 5), "time": 0.1, "data_time": 0.01}
            for it in range(0, 40, 2)]
    for r in rows:
        r["total"] = r["loss_cls"] + r["loss_reg"]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gt, dets = _gt_and_dets(seed)
    for e in range(evals):
        metrics, curves = evaluate_coco_curves(gt, dets[: 6 + 3 * e])
        metrics["iteration"] = curves["iteration"] = 20 * (e + 1)
        with open(path / "eval_history.jsonl", "a") as f:
            f.write(json.dumps({k: v for k, v in metrics.items() if k != "per_class"}) + "\n")
        write_eval_json(path / "eval.json", metrics)
        (path / "pr_curves.json").write_text(json.dumps(curves))
    return path


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
        return im.size


def test_write_run_plots_writes_the_four_plots_as_valid_pngs_of_the_figure_size(tmp_path):
    run = make_run(tmp_path / "run")
    written = write_run_plots(run)
    assert [p.name for p in written] == ["loss_curve.png", "ap_history.png", "pr_curves.png", "per_class_ap.png"]
    assert all(p.parent == run for p in written)
    assert _png_size(run / "loss_curve.png") == (8 * DPI, 6 * DPI)
    assert _png_size(run / "pr_curves.png") == (11 * DPI, int(4.8 * DPI))
    assert _png_size(run / "ap_history.png") == (8 * DPI, int(4.5 * DPI))
    assert _png_size(run / "per_class_ap.png")[0] == 8 * DPI


def test_write_run_plots_without_evaluation_writes_the_loss_curve_only(tmp_path):
    run = make_run(tmp_path / "run", evals=0)
    assert [p.name for p in write_run_plots(run)] == ["loss_curve.png"]
    assert write_run_plots(tmp_path / "missing") == []
    (tmp_path / "empty").mkdir()
    assert write_run_plots(tmp_path / "empty") == []


def test_loss_keys_are_the_losses_and_total_not_assignment_statistics_or_timings(tmp_path):
    run = load_run(make_run(tmp_path / "run", evals=0))
    assert run.loss_keys() == ["loss_cls", "loss_reg", "total"]
    its, lr = run.series("lr")
    assert its[0] == 0 and lr[-1] == pytest.approx(0.01)


def test_plot_loss_curve_of_a_metrics_file_is_the_run_loss_plot(tmp_path):
    run = make_run(tmp_path / "run", evals=0)
    png = plot_loss_curve(run / "metrics.jsonl", tmp_path / "loss.png")
    assert _png_size(png) == (8 * DPI, 6 * DPI)
    assert plot_loss_curve(tmp_path / "none.jsonl", tmp_path / "x.png") is None


def test_write_plots_overlays_two_runs(tmp_path):
    a, b = make_run(tmp_path / "a" / "run"), make_run(tmp_path / "b" / "run", seed=1, scale=2.0)
    runs = [load_run(d, label) for d, label in zip((a, b), run_labels([a, b]))]
    assert [r.label for r in runs] == ["a/run", "b/run"]  # same names: the parents tell them apart
    written = write_plots(runs, tmp_path / "cmp")
    assert len(written) == 4
    w, h = _png_size(tmp_path / "cmp" / "loss_curve.png")
    assert w == 11 * DPI and h > 6 * DPI  # one panel per loss (+ LR), two columns


# ------------------------------------------------------------------------------------------------ drawing
def _pred(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_dedup_for_drawing_keeps_the_best_box_of_each_object_whatever_its_class():
    pred = _pred([[10, 10, 50, 50], [11, 10, 50, 51], [60, 60, 90, 90], [5, 5, 8, 8]],
                 [0.6, 0.9, 0.5, 0.1], [0, 1, 0, 2])
    shown = dedup_for_drawing(pred, score_thresh=0.3)
    assert shown["labels"].tolist() == [1, 0]  # class 1 (0.9) wins over class 0 (0.6) on the same object
    assert shown["scores"].tolist() == pytest.approx([0.9, 0.5])
    assert len(dedup_for_drawing(pred, score_thresh=0.95)["boxes"]) == 0


def test_drawn_labels_sit_on_a_filled_background_above_the_box_of_an_upscaled_image():
    image = torch.full((3, 100, 160), 128, dtype=torch.uint8)
    pred = _pred([[40, 40, 120, 90], [41, 40, 120, 91]], [0.8, 0.7], [2, 4])
    out = draw_predictions(image, pred, ["a", "b", "circle", "d", "e"], 0.3)
    scale = DRAW_MIN_SIDE / 100
    assert tuple(out.shape) == (3, DRAW_MIN_SIDE, round(160 * scale))
    color = torch.tensor(class_color(2)).view(3, 1, 1)
    x1, y1 = int(40 * scale), int(40 * scale)
    above = out[:, y1 - 14:y1 - 4, x1 + 2:x1 + 60]  # the label's strip above the box
    is_bg = (above == color).all(0)
    assert is_bg.float().mean() > 0.3  # a filled background in the class colour...
    assert (~is_bg & (above != 128).any(0)).any()  # ...with text in another colour on it
    assert not (out == torch.tensor(class_color(4)).view(3, 1, 1)).all(0).any()  # the duplicate is not drawn
    inside = out[:, y1 + 20:int(90 * scale) - 20, x1 + 20:int(120 * scale) - 20]
    assert (inside == 128).all()  # the box interior stays untouched


def test_ground_truth_beside_predictions_is_two_titled_panels():
    image = torch.full((3, 64, 64), 200, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[5.0, 5.0, 40.0, 40.0]]), "labels": torch.tensor([0])}
    gt = draw_ground_truth(image, target, ["circle"])
    both = draw_side_by_side(image, target, _pred([[6, 6, 40, 41]], [0.9], [0]), ["circle"], 0.3)
    assert gt.shape[-1] == DRAW_MIN_SIDE
    assert both.shape[-1] == 2 * DRAW_MIN_SIDE + 8 and both.shape[-2] > DRAW_MIN_SIDE


# ------------------------------------------------------------------------------------------------ browse
def test_write_browse_on_a_generated_shapes_dataset(tmp_path):
    generate_shapes(tmp_path / "shapes", num_train=6, num_val=3)
    ds = CocoDetection(tmp_path / "shapes" / "val", tmp_path / "shapes" / "annotations" / "instances_val.json",
                       train=False)
    summary = write_browse(ds, tmp_path / "out", n=2)
    ann = json.loads((tmp_path / "shapes" / "annotations" / "instances_val.json").read_text())
    assert summary["num_boxes"] == len(ann["annotations"]) == sum(summary["boxes_per_class"].values())
    assert sum(summary["boxes_per_size"].values()) == summary["num_boxes"]
    assert len(summary["samples"]) == 2 and summary["samples"][0]["image_id"] == ds.image_ids[0]
    for s in summary["samples"]:
        with Image.open(tmp_path / "out" / s["output"]) as im:
            assert min(im.size) == DRAW_MIN_SIDE
    for name in ("class_counts.png", "box_sizes.png"):
        _png_size(tmp_path / "out" / name)
    page = (tmp_path / "out" / "index.html").read_text()
    assert all(s["output"] in page for s in summary["samples"]) and "class_counts.png" in page
