"""``train``, ``eval``, ``predict`` and ``demo``: the commands that run a model."""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from ..errors import InputError
from ..presets import load_config
from .common import DEMO_PRESET, check_weights_file, class_names, load_model

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def quiet_other_ranks() -> None:
    """Under torchrun only rank 0 talks: the other processes' warnings and library log lines
    are silenced (their errors still reach stderr)."""
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("assigndet").setLevel(logging.ERROR)
        warnings.simplefilter("ignore")


def train_config(preset: str, out: Path, overrides: list[str], resume: bool):
    """The preset with ``overrides``; with ``resume`` and a run in ``out``: the run's saved
    config with the overrides that may change on resume (:func:`assigndet.runs.resume_config`)."""
    from ..runs import CONFIG_FILE, resume_config

    cfg = load_config(preset, overrides)
    if resume and (out / CONFIG_FILE).is_file():
        return resume_config(out, preset, load_config(preset), overrides)
    return cfg


def cmd_train(args) -> int:
    from ..engine import destroy_distributed, train
    from ..evaluation import format_ap
    from ..utils import is_main_process

    quiet_other_ranks()
    out = Path(args.out)
    cfg = train_config(args.preset, out, args.overrides, args.resume)
    try:
        result = train(cfg, out, resume=args.resume, overwrite=args.overwrite, preset=args.preset,
                       progress=not args.no_progress)
        main = is_main_process()  # asked before the process group is gone
    finally:
        destroy_distributed()
    if result.metrics is not None and main:
        print(f"{format_ap(result.metrics['AP'])} (eval.json in {args.out})", flush=True)
    return result.exit_code


def cmd_eval(args) -> int:
    from ..engine import destroy_distributed
    from ..evaluation import evaluate, format_ap, weights_config
    from ..utils import init_distributed, is_main_process, resolve_device

    quiet_other_ranks()
    check_weights_file(args.weights)
    if args.preset is not None and _OVERRIDE.match(args.preset):  # no preset: an override came first
        args.overrides, args.preset = [args.preset, *args.overrides], None
    cfg = (load_config(args.preset, args.overrides) if args.preset is not None
           else weights_config(args.weights, overrides=args.overrides))
    init_distributed(resolve_device(cfg.device))
    try:
        model, _ = load_model(cfg, args.weights)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        metrics = evaluate(model, cfg, args.out, progress=not args.no_progress)
        main = is_main_process()  # asked before the process group is gone
    finally:
        destroy_distributed()
    if main:
        print(format_ap(metrics["AP"]), flush=True)
    return 0


def _split_inputs(args) -> list[str]:
    """The image paths of ``args.inputs``; ``key=value`` overrides among them (argparse puts them
    there) move to ``args.overrides``."""
    inputs = []
    for item in args.inputs:
        if _OVERRIDE.match(item) and not Path(item).exists():
            args.overrides.append(item)
        else:
            inputs.append(item)
    if not inputs:
        raise InputError("no input images given")
    return inputs


def _predict_one(model, path: Path, names: list[str], score_thresh: float, out: Path, name: str) -> dict:
    """Detect, draw into ``out / name``; the record of ``predictions.json``."""
    from ..evaluation import inference
    from ..viz import draw_predictions, read_image, write_image

    image = read_image(path)
    pred = inference(model, [image])[0]
    keep = pred["scores"] >= score_thresh
    dets = [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 4), "label": int(c),
             "class_name": names[int(c)]}
            for b, s, c in zip(pred["boxes"][keep], pred["scores"][keep], pred["labels"][keep])]
    write_image(draw_predictions(image, pred, names, score_thresh), out / name)
    return {"file": str(path), "output": name, "width": int(image.shape[2]), "height": int(image.shape[1]),
            "detections": dets}


def _output_names(paths: list[Path]) -> list[str]:
    """``STEM.png`` per input, numbered where two inputs share a stem."""
    names, used = [], set()
    for path in paths:
        name, k = f"{path.stem}.png", 1
        while name in used:
            name, k = f"{path.stem}_{k}.png", k + 1
        used.add(name)
        names.append(name)
    return names


def cmd_predict(args) -> int:
    """Every image that can be read is detected and drawn; an unreadable one is skipped with a
    warning line. ``predictions.json``: ``{"images": [records], "skipped": [{"file", "error"}]}``.
    Exit 0 when at least one image worked, else the one-line error of the first one."""
    from ..evaluation import weights_config
    from ..utils import atomic_write_text
    from ..viz import collect_images

    check_weights_file(args.weights)
    paths = collect_images(_split_inputs(args))
    cfg = weights_config(args.weights, preset=args.preset, overrides=args.overrides)
    model, report = load_model(cfg, args.weights)
    names = class_names(cfg, report.metadata, cfg.model.num_classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    skipped: list[dict] = []
    pending: list[str] = []  # warnings wait for a first success: if none comes, one error line says it all
    for path, name in zip(paths, _output_names(paths)):
        try:
            records.append(_predict_one(model, path, names, args.score_thresh, out, name))
        except InputError as e:  # unreadable / corrupt image: the others go on
            skipped.append({"file": str(path), "error": str(e)})
            pending.append(f"assigndet: warning: skipped {path}: {e}")
        else:
            print(f"{path}: {len(records[-1]['detections'])} detections -> {out / name}")
        if records and pending:
            print("\n".join(pending), file=sys.stderr, flush=True)
            pending.clear()
    atomic_write_text(out / "predictions.json", json.dumps({"images": records, "skipped": skipped}, indent=1) + "\n")
    if not records:
        first = skipped[0]["error"]
        raise InputError(first if len(skipped) == 1 else f"none of the {len(skipped)} images could be read "
                         f"(listed in {out / 'predictions.json'}); the first: {first}")
    if skipped:
        print(f"assigndet: {len(skipped)} of {len(paths)} images skipped (listed in {out / 'predictions.json'})",
              file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from ..data import build_dataset, generate_shapes
    from ..engine import train
    from ..evaluation import format_ap, inference
    from ..viz import draw_side_by_side, write_image

    data = Path(args.data)
    if not (data / "annotations" / "instances_train.json").is_file():
        kw = {k: v for k, v in (("num_train", args.train), ("num_val", args.val)) if v is not None}
        print(f"generating the shapes dataset in {data} ...")
        generate_shapes(data, seed=0, **kw)
    out = Path(args.out)
    cfg = train_config(DEMO_PRESET, out, [f"data.root={data}", *args.overrides], args.resume)
    result = train(cfg, out, resume=args.resume, overwrite=args.overwrite, preset=DEMO_PRESET,
                   progress=not args.no_progress)
    if result.interrupted:
        return result.exit_code
    # a few drawn predictions on validation images
    model, _ = load_model(cfg, str(out / "model_final.safetensors"))
    val = build_dataset(cfg, train=False)
    names = list(val.class_names)
    for i in range(min(args.num_images, len(val))):
        image, target = val[i]
        pred = inference(model, [image])[0]
        write_image(draw_side_by_side(image, target, pred, names, args.score_thresh),
                    out / "predictions" / f"{int(target['image_id'])}.png")
    metrics = result.metrics or json.loads((out / "eval.json").read_text())
    print(f"demo finished: {format_ap(metrics['AP'])} on {metrics['num_images']} validation images; "
          f"eval.json, predictions/ (ground truth | predictions), loss_curve.png and the other plots in {out}")
    return 0


def register(sub) -> None:
    """train, eval, predict, demo."""
    p = sub.add_parser("train", help="train a preset")
    p.add_argument("preset", help="preset name (`assigndet presets` lists them)")
    p.add_argument("--out", required=True, help="output directory (checkpoints, logs, eval.json)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT with its saved config.yaml (only a few overrides are "
                        "allowed, e.g. solver.max_iter or device: a refused one is named with the allowed keys)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the files of a run already in OUT (config, checkpoints, logs, evaluation) first")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.max_iter=2000")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="COCO evaluation of weights")
    p.add_argument("preset", nargs="?", default=None,
                   help="preset name; without it, the config.yaml beside the weights or the config stored in them")
    p.add_argument("--weights", required=True, help="a .safetensors file of assigndet or a released .pth")
    p.add_argument("--out", default=None, help="write eval.json, pr_curves.json and detections.json here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. test.max_images=100")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="detect objects in images and draw them")
    p.add_argument("--weights", required=True, help="a .safetensors file of assigndet or a released .pth")
    p.add_argument("--preset", default=None,
                   help="used when there is neither a config.yaml beside the weights nor a config stored in them")
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIR", help="image files or folders (then key=value overrides)")
    p.add_argument("--out", required=True, help="drawn images and predictions.json go here")
    p.add_argument("--score-thresh", type=float, default=0.3, help="detections drawn and listed from this score")
    p.set_defaults(func=cmd_predict, overrides=[])  # key=value overrides may follow the images

    p = sub.add_parser("demo", help=f"generate shapes, train {DEMO_PRESET}, evaluate, draw")
    p.add_argument("--out", default="runs/demo", help="run directory (checkpoints, eval.json, plots, drawings)")
    p.add_argument("--data", default="data/shapes", help="shapes dataset directory (generated if missing)")
    p.add_argument("--train", type=int, default=None, help="training images to generate")
    p.add_argument("--val", type=int, default=None, help="validation images to generate")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo run in OUT")
    p.add_argument("--overwrite", action="store_true", help="replace a demo run already in OUT")
    p.add_argument("--num-images", type=int, default=4, help="validation images to draw")
    p.add_argument("--score-thresh", type=float, default=0.3, help="drawing threshold")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.max_iter=500")
    p.set_defaults(func=cmd_demo)
