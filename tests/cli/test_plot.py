"""``assigndet plot``: the plots of one run in its directory, several runs overlaid, a clear error otherwise."""
import json

from PIL import Image

from assigndet.cli import main
from assigndet.evaluation import evaluate_coco_curves, write_eval_json

GT = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "1.jpg"}],
      "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1 + k % 2, "bbox": [10 * k, 10 * k, 20, 20],
                       "area": 400, "iscrowd": 0} for k in range(4)],
      "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "star"}]}


def _run(path, shift: float, with_eval: bool = True):
    path.mkdir(parents=True)
    rows = [{"iteration": i, "loss_cls": 1 / (i + 1) + shift, "total": 2 / (i + 1) + shift, "lr": 0.01}
            for i in range(0, 10, 2)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if with_eval:
        dets = [{"image_id": 1, "category_id": 1 + k % 2, "bbox": [10 * k + shift, 10 * k, 20, 20],
                 "score": 0.5 + k / 10} for k in range(4)]
        metrics, curves = evaluate_coco_curves(GT, dets)
        metrics["iteration"] = 10
        write_eval_json(path / "eval.json", metrics)
        history = {k: v for k, v in metrics.items() if k != "per_class"}
        (path / "eval_history.jsonl").write_text(json.dumps(history) + "\n")
        (path / "pr_curves.json").write_text(json.dumps(curves))
    return path


def test_plot_one_run_writes_into_the_run_directory(tmp_path, capsys):
    run = _run(tmp_path / "run", 0.0)
    assert main(["plot", str(run)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run / n) for n in ("loss_curve.png", "ap_history.png", "pr_curves.png", "per_class_ap.png")]


def test_plot_overlays_two_runs_into_out(tmp_path, capsys):
    a, b = _run(tmp_path / "a", 0.0), _run(tmp_path / "b", 3.0, with_eval=False)
    out = tmp_path / "cmp"
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ap_history.png", "loss_curve.png", "per_class_ap.png", "pr_curves.png"]
    with Image.open(out / "loss_curve.png") as im:
        assert im.format == "PNG" and im.size[0] == 1100


def test_plot_of_a_directory_that_is_not_a_run_is_one_error_line(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    assert main(["plot", str(tmp_path / "notarun")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("assigndet: error: ") and "is not a run directory" in err[0]
    assert str(tmp_path / "notarun") in err[0]
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
