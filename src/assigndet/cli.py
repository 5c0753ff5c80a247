"""The ``assigndet`` command line (also ``python -m assigndet``).

::

    assigndet train PRESET --out DIR [--resume] [key=value ...]
    assigndet eval PRESET --weights W [--out DIR] [key=value ...]
    assigndet predict --weights W [--preset P] IMAGES_OR_DIR ... --out DIR [--score-thresh 0.3]
    assigndet data shapes --out DIR --train N --val M --seed S
    assigndet presets [--show NAME]
    assigndet convert IN.pth OUT.safetensors --preset NAME [key=value ...]
    assigndet demo [--out runs/demo] [--data data/shapes]

``train`` and ``eval`` also run under ``torchrun`` (one process per device).

Exit codes: 0 success; 2 user error (bad preset/key/value, missing dataset, weights or image:
one line ``assigndet: error: ...`` on stderr, ``--debug`` shows the traceback); 1 any other
failure, including a non-finite training loss; 130 / 143 training stopped by SIGINT / SIGTERM
after saving a checkpoint (continue with ``--resume``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. With the default
# busy-waiting, 2 compute threads beside the data-loader workers on a 2-core machine ran a
# training iteration ~10x slower; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Only modules that load no torch are imported here; the commands import the torch-based ones
# (engine, evaluation, detectors, data, checkpoints, viz, utils) inside their functions, so that
# `assigndet --help` / `presets` stay fast and OMP_WAIT_POLICY is set before torch loads (there is no
# import cycle to dodge).
from .config import apply_overrides, config_from_yaml, config_to_yaml  # noqa: E402
from .errors import ConfigError, InputError, UserError  # noqa: E402
from .presets import PRESETS, PUBLISHED_AP, PUBLISHED_NOTES, get_preset, load_config  # noqa: E402

#: the small preset trained by ``assigndet demo`` on the generated shapes dataset
DEMO_PRESET = "atss_R_18_shapes"
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
#: what the command line reports as one line with exit code 2
USER_ERRORS = (UserError, FileNotFoundError)


def _say(*args: Any, **kw: Any) -> None:
    """print on rank 0 only."""
    from .utils import is_main_process

    if is_main_process():
        print(*args, **kw, flush=True)


# ======================================================================================= helpers
def _load_model(cfg, weights: str):
    """The configured detector on ``cfg.device`` in eval mode with ``weights`` loaded (this
    library's files or a released ``.pth``); returns ``(model, LoadReport)``."""
    from .checkpoints import load_weights
    from .detectors import build_model
    from .utils import resolve_device

    model = build_model(cfg.model)
    report = load_weights(model, weights)
    return model.to(resolve_device(cfg.device)).eval(), report


def _class_names(cfg, metadata: dict[str, str], num_classes: int) -> list[str]:
    """From the weights' metadata, else the config's validation annotations, else numbers."""
    from .data import dataset_paths

    def attempt(read) -> Optional[list[str]]:
        try:
            return read()
        except Exception:  # noqa: BLE001  (missing, unreadable or malformed: the next source)
            return None

    ann = dataset_paths(cfg.data, train=False)[1]
    names = attempt(lambda: list(json.loads(metadata["class_names"])))
    if names is None:
        names = attempt(lambda: [c["name"] for c in sorted(json.loads(ann.read_text())["categories"],
                                                            key=lambda c: c["id"])])
    return names if names is not None and len(names) == num_classes else [str(i) for i in range(num_classes)]


def _check_weights_file(weights: str) -> None:
    if not Path(weights).is_file():
        raise InputError(f"weights file not found: {weights}")


# ====================================================================================== commands
def cmd_presets(args) -> int:
    if args.show is not None:
        print(config_to_yaml(get_preset(args.show)), end="")
        return 0
    width = max((len(n) for n in PRESETS), default=10)
    print(f"{'preset':<{width}}  published AP")
    for name in sorted(PRESETS):
        ap = PUBLISHED_AP.get(name)
        note = PUBLISHED_NOTES.get(name, "") if ap is not None else ""
        line = f"{name:<{width}}  {ap:.1f}" if ap is not None else f"{name:<{width}}  -"
        print(f"{line}  ({note})" if note else line)
    return 0


def cmd_convert(args) -> int:
    """A released ``.pth`` (or any loadable weights) -> this library's ``.safetensors``."""
    from .checkpoints import load_weights, save_weights
    from .detectors import build_model

    src, dst = Path(args.input), Path(args.output)
    _check_weights_file(args.input)
    if dst.suffix != ".safetensors":
        raise InputError(f"the output must be a .safetensors file, got {dst}")
    cfg = load_config(args.preset, args.overrides)
    model = build_model(cfg.model)
    layout = load_weights(model, src).layout  # every check: layout, anchors, classifier, keys, shapes
    save_weights(model, dst, metadata={"preset": args.preset, "source": src.name, "source_layout": layout,
                                       "config": config_to_yaml(cfg)})
    n = len(model.state_dict())
    print(f"converted {src} ({layout} layout) for preset {args.preset}: {n} tensors -> {dst}")
    return 0


def cmd_data_shapes(args) -> int:
    from .data import generate_shapes

    info = generate_shapes(args.out, num_train=args.train, num_val=args.val, seed=args.seed,
                           **({"min_side": args.min_side} if args.min_side else {}),
                           **({"max_side": args.max_side} if args.max_side else {}))
    print(f"wrote {info['train']['num_images']} train and {info['val']['num_images']} val images "
          f"({info['train']['num_annotations'] + info['val']['num_annotations']} boxes) to {info['root']}")
    return 0


def cmd_train(args) -> int:
    from .engine import destroy_distributed, train

    cfg = load_config(args.preset, args.overrides)
    try:
        result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    finally:
        destroy_distributed()
    if result.metrics is not None:
        _say(f"AP {100 * result.metrics['AP']:.2f} (eval.json in {args.out})")
    return result.exit_code


def cmd_eval(args) -> int:
    from .engine import destroy_distributed
    from .evaluation import evaluate
    from .utils import init_distributed, resolve_device

    cfg = load_config(args.preset, args.overrides)
    _check_weights_file(args.weights)
    init_distributed(resolve_device(cfg.device))
    try:
        model, _ = _load_model(cfg, args.weights)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        metrics = evaluate(model, cfg, args.out)
    finally:
        destroy_distributed()
    _say(f"AP {100 * metrics['AP']:.2f}")
    return 0


def _predict_config(args):
    beside = Path(args.weights).parent / "config.yaml"
    if beside.is_file():
        return apply_overrides(config_from_yaml(str(beside)), args.overrides)
    if args.preset:
        return load_config(args.preset, args.overrides)
    raise ConfigError(f"no config.yaml beside {args.weights}; pass --preset NAME")


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
    from .evaluation import inference
    from .viz import draw_predictions, read_image, write_image

    image = read_image(path)
    pred = inference(model, [image])[0]
    keep = pred["scores"] >= score_thresh
    dets = [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 4), "label": int(c),
             "class_name": names[int(c)]}
            for b, s, c in zip(pred["boxes"][keep], pred["scores"][keep], pred["labels"][keep])]
    write_image(draw_predictions(image, pred, names, score_thresh), out / name)
    return {"file": str(path), "output": name, "width": int(image.shape[2]), "height": int(image.shape[1]),
            "detections": dets}


def cmd_predict(args) -> int:
    from .utils import atomic_write_text
    from .viz import collect_images

    _check_weights_file(args.weights)
    paths = collect_images(_split_inputs(args))
    cfg = _predict_config(args)
    model, report = _load_model(cfg, args.weights)
    names = _class_names(cfg, report.metadata, cfg.model.num_classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    used: set[str] = set()
    for path in paths:
        name, k = f"{path.stem}.png", 1
        while name in used:
            name, k = f"{path.stem}_{k}.png", k + 1
        used.add(name)
        records.append(_predict_one(model, path, names, args.score_thresh, out, name))
        print(f"{path}: {len(records[-1]['detections'])} detections -> {out / name}")
    atomic_write_text(out / "predictions.json", json.dumps(records, indent=1) + "\n")
    return 0


def cmd_demo(args) -> int:
    from .data import build_dataset, generate_shapes
    from .engine import train
    from .evaluation import inference
    from .viz import draw_predictions, plot_loss_curve, write_image

    data = Path(args.data)
    if not (data / "annotations" / "instances_train.json").is_file():
        kw = {k: v for k, v in (("num_train", args.train), ("num_val", args.val)) if v is not None}
        print(f"generating the shapes dataset in {data} ...")
        generate_shapes(data, seed=0, **kw)
    cfg = load_config(DEMO_PRESET, [f"data.root={data}", *args.overrides])
    out = Path(args.out)
    result = train(cfg, out, resume=args.resume, progress=not args.no_progress)
    if result.interrupted:
        return result.exit_code
    # a few drawn predictions on validation images
    model, _ = _load_model(cfg, str(out / "model_final.safetensors"))
    val = build_dataset(cfg, train=False)
    names = list(val.class_names)
    for i in range(min(args.num_images, len(val))):
        image, target = val[i]
        pred = inference(model, [image])[0]
        write_image(draw_predictions(image, pred, names, args.score_thresh),
                    out / "predictions" / f"{int(target['image_id'])}.png")
    png = plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
    metrics = result.metrics or json.loads((out / "eval.json").read_text())
    print(f"demo finished: AP {100 * metrics['AP']:.2f} on {metrics['num_images']} validation images; "
          f"eval.json, predictions/ and {png.name if png else 'no loss curve'} in {out}")
    return 0


# ======================================================================================== parser
def _add_run_parsers(sub) -> None:
    """train, eval, predict."""
    p = sub.add_parser("train", help="train a preset")
    p.add_argument("preset")
    p.add_argument("--out", required=True, help="output directory (checkpoints, logs, eval.json)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last_checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="COCO evaluation of weights")
    p.add_argument("preset")
    p.add_argument("--weights", required=True)
    p.add_argument("--out", default=None, help="write eval.json and detections.json here")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="detect objects in images and draw them")
    p.add_argument("--weights", required=True)
    p.add_argument("--preset", default=None, help="used when there is no config.yaml beside the weights")
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--score-thresh", type=float, default=0.3)
    p.set_defaults(func=cmd_predict, overrides=[])  # key=value overrides may follow the images


def _add_tool_parsers(sub) -> None:
    """data, presets, convert, demo."""
    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATASET")
    q = dsub.add_parser("shapes", help="generate the COCO-format shapes dataset")
    q.add_argument("--out", required=True)
    q.add_argument("--train", type=int, default=1000)
    q.add_argument("--val", type=int, default=200)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--min-side", type=int, default=None)
    q.add_argument("--max-side", type=int, default=None)
    q.set_defaults(func=cmd_data_shapes, overrides=[])

    p = sub.add_parser("presets", help="list presets with their published AP, or --show one's config")
    p.add_argument("--show", metavar="NAME", default=None, help="print the resolved config of preset NAME (YAML)")
    p.set_defaults(func=cmd_presets, overrides=[])

    p = sub.add_parser("convert", help="convert a released .pth checkpoint to .safetensors for a preset")
    p.add_argument("input", metavar="IN.pth")
    p.add_argument("output", metavar="OUT.safetensors")
    p.add_argument("--preset", required=True, help="the preset whose model the checkpoint belongs to")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo", help=f"generate shapes, train {DEMO_PRESET}, evaluate, draw")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", default="data/shapes", help="shapes dataset directory (generated if missing)")
    p.add_argument("--train", type=int, default=None, help="training images to generate")
    p.add_argument("--val", type=int, default=None, help="validation images to generate")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--num-images", type=int, default=4, help="validation images to draw")
    p.add_argument("--score-thresh", type=float, default=0.3)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assigndet", description="ATSS / PAA detectors: train, evaluate, predict.",
        epilog="Overrides are key=value pairs checked against the config schema, e.g. solver.base_lr=0.005. "
               "Add --debug to any command to see tracebacks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_parsers(sub)
    _add_tool_parsers(sub)
    return parser


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value pairs may come after options (argparse stops collecting positionals there)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        if not hasattr(args, "overrides") or args.command in ("presets", "data"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def _error_line(e: BaseException) -> str:
    msg = " ".join(str(e).split("\n")) if str(e) else type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    return f"assigndet: error: {msg}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = _parse([a for a in argv if a != "--debug"])
    try:
        return int(args.func(args) or 0)
    except (*USER_ERRORS, FloatingPointError, KeyboardInterrupt) as e:
        if debug:
            traceback.print_exc()
        if isinstance(e, KeyboardInterrupt):
            print("assigndet: interrupted", file=sys.stderr)
            return 130
        if isinstance(e, FloatingPointError):  # a non-finite training loss: a failure, not a user error
            print(f"assigndet: error: {e}", file=sys.stderr)
            return 1
        print(_error_line(e), file=sys.stderr)
        return 2


_MOVED_TO_VIZ = ("draw_predictions", "plot_loss_curve", "IMAGE_SUFFIXES")


def __getattr__(name: str):
    """Deprecated (one release): ``assigndet.cli.draw_predictions``, ``plot_loss_curve`` and
    ``IMAGE_SUFFIXES`` are now in :mod:`assigndet.viz` (looked up on use: importing the CLI loads no torch)."""
    if name in _MOVED_TO_VIZ:
        from . import viz

        warnings.warn(f"assigndet.cli.{name} moved to assigndet.viz.{name}", DeprecationWarning, stacklevel=2)
        return getattr(viz, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["main", "build_parser", "DEMO_PRESET", "InputError", "USER_ERRORS"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
