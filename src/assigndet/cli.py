"""The ``assigndet`` command line (also ``python -m assigndet``).

::

    assigndet train PRESET --out DIR [--resume] [key=value ...]
    assigndet eval PRESET --weights W [--out DIR] [key=value ...]
    assigndet predict --weights W [--preset P] IMAGES_OR_DIR ... --out DIR [--score-thresh 0.3]
    assigndet data shapes --out DIR --train N --val M --seed S
    assigndet presets
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
from pathlib import Path
from typing import Any, Optional, Sequence

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. With the default
# busy-waiting, 2 compute threads beside the data-loader workers on a 2-core machine ran a
# training iteration ~10x slower; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: the small preset trained by ``assigndet demo`` on the generated shapes dataset
DEMO_PRESET = "atss_R_18_shapes"
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class InputError(ValueError):
    """A bad command-line input (image path, weights file, ...)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoints import CheckpointError
    from .config import ConfigError

    errors: list[type[BaseException]] = [ConfigError, CheckpointError, InputError, FileNotFoundError]
    try:
        from .data import DatasetError

        errors.append(DatasetError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from .detectors import TargetError

        errors.append(TargetError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _say(*args: Any, **kw: Any) -> None:
    """print on rank 0 only."""
    from .utils import is_main_process

    if is_main_process():
        print(*args, **kw, flush=True)


# ======================================================================================= helpers
def _load_model(cfg, weights: Optional[str]):
    from .engine import default_build_model
    from .released import load_detector_weights
    from .utils import resolve_device

    device = resolve_device(cfg.device)
    model = default_build_model(cfg.model)
    report = None
    if weights is not None:
        report = load_detector_weights(model, weights)  # this library's files and released .pth
    return model.to(device).eval(), report


def _class_names(cfg, weights: Optional[str], num_classes: int) -> list[str]:
    """From the weights' metadata, else the config's validation annotations, else numbers."""
    names: Optional[list[str]] = None
    if weights and str(weights).endswith(".safetensors"):
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                meta = f.metadata() or {}
            if "class_names" in meta:
                names = list(json.loads(meta["class_names"]))
        except Exception:  # noqa: BLE001  (no or unreadable metadata: fall back)
            names = None
    if names is None:
        from .engine import _data_path

        ann = _data_path(cfg.data.root, cfg.data.val_ann)
        if ann.is_file():
            try:
                cats = json.loads(ann.read_text())["categories"]
                names = [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
            except Exception:  # noqa: BLE001
                names = None
    if names is None or len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return names


def _collect_images(inputs: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise InputError(f"no image files in directory {p}")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise InputError(f"image not found: {p}")
    return paths


def _read_image(path: Path):
    """RGB uint8 (3, H, W) via Pillow (EXIF orientation ignored, like the COCO loaders)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))  # (H, W, 3)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise InputError(f"cannot read image {path}: {reason}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def draw_predictions(image, pred: dict, class_names: Sequence[str], score_thresh: float):
    """``image`` uint8 (3, H, W) with the boxes scoring ≥ ``score_thresh`` drawn and labelled."""
    from torchvision.utils import draw_bounding_boxes

    keep = pred["scores"] >= score_thresh
    boxes = pred["boxes"][keep].float()
    labels = [f"{class_names[int(c)]} {float(s):.2f}" for c, s in zip(pred["labels"][keep], pred["scores"][keep])]
    if len(boxes) == 0:
        return image
    h, w = image.shape[-2:]
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    return draw_bounding_boxes(image, boxes, labels=labels, width=2)


def _write_image(image, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(path)  # (H, W, 3)


def plot_loss_curve(metrics_file: Path, png: Path) -> Optional[Path]:
    """Loss curves (every loss and the total) from ``metrics.jsonl`` → PNG (matplotlib Agg)."""
    if not metrics_file.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    keys = [k for k in rows[0] if k not in ("iteration", "lr", "time", "data_time")]
    fig, ax = plt.subplots(figsize=(7, 4))
    its = [r["iteration"] for r in rows]
    for k in keys:
        ax.plot(its, [r.get(k, float("nan")) for r in rows], label=k, linewidth=2 if k == "total" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


# ====================================================================================== commands
def cmd_presets(args) -> int:
    from . import presets  # noqa: F401  (registers)
    from .config import PRESETS, PUBLISHED_AP
    from .zoo import PUBLISHED_NOTES

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
    from .checkpoints import save_weights
    from .config import config_to_yaml, load_config
    from .detectors import build_model
    from .released import detect_layout, load_detector_weights, read_checkpoint

    src, dst = Path(args.input), Path(args.output)
    if not src.is_file():
        raise InputError(f"weights file not found: {src}")
    if dst.suffix != ".safetensors":
        raise InputError(f"the output must be a .safetensors file, got {dst}")
    cfg = load_config(args.preset, args.overrides)
    model = build_model(cfg.model)
    layout = detect_layout(read_checkpoint(src)) if src.suffix != ".safetensors" else "assigndet"
    load_detector_weights(model, src)  # every check: layout, anchors, missing/unexpected/mis-shaped keys
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
    from .config import load_config
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
    from .config import load_config
    from .engine import destroy_distributed, evaluate
    from .utils import init_distributed, resolve_device

    cfg = load_config(args.preset, args.overrides)
    if not Path(args.weights).is_file():
        raise InputError(f"weights file not found: {args.weights}")
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
    from .config import apply_overrides, config_from_yaml, load_config

    beside = Path(args.weights).parent / "config.yaml"
    if beside.is_file():
        return apply_overrides(config_from_yaml(str(beside)), args.overrides)
    if args.preset:
        return load_config(args.preset, args.overrides)
    from .config import ConfigError

    raise ConfigError(f"no config.yaml beside {args.weights}; pass --preset NAME")


def cmd_predict(args) -> int:
    from .engine import inference

    if not Path(args.weights).is_file():
        raise InputError(f"weights file not found: {args.weights}")
    # key=value overrides may sit among the image paths (argparse puts them into ``inputs``)
    inputs = []
    for item in args.inputs:
        if _OVERRIDE.match(item) and not Path(item).exists():
            args.overrides.append(item)
        else:
            inputs.append(item)
    if not inputs:
        raise InputError("no input images given")
    paths = _collect_images(inputs)
    cfg = _predict_config(args)
    model, _ = _load_model(cfg, args.weights)
    names = _class_names(cfg, args.weights, cfg.model.num_classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    used: set[str] = set()
    for path in paths:
        image = _read_image(path)
        pred = inference(model, [image])[0]
        keep = pred["scores"] >= args.score_thresh
        dets = [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 4), "label": int(c),
                 "class_name": names[int(c)]}
                for b, s, c in zip(pred["boxes"][keep], pred["scores"][keep], pred["labels"][keep])]
        stem = path.stem
        name, k = f"{stem}.png", 1
        while name in used:
            name, k = f"{stem}_{k}.png", k + 1
        used.add(name)
        _write_image(draw_predictions(image, pred, names, args.score_thresh), out / name)
        records.append({"file": str(path), "output": name, "width": int(image.shape[2]),
                        "height": int(image.shape[1]), "detections": dets})
        print(f"{path}: {len(dets)} detections -> {out / name}")
    from .utils import atomic_write_text

    atomic_write_text(out / "predictions.json", json.dumps(records, indent=1) + "\n")
    return 0


def cmd_demo(args) -> int:
    from .config import load_config
    from .data import generate_shapes
    from .engine import build_dataset, inference, train

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
    from .checkpoints import load_weights, unwrap_model
    from .engine import default_build_model
    from .utils import resolve_device

    model = default_build_model(cfg.model)
    load_weights(model, out / "model_final.safetensors")
    model = model.to(resolve_device(cfg.device)).eval()
    val = build_dataset(cfg, train=False)
    names = list(val.class_names)
    for i in range(min(args.num_images, len(val))):
        image, target = val[i]
        pred = inference(unwrap_model(model), [image])[0]
        _write_image(draw_predictions(image, pred, names, args.score_thresh), out / "predictions" /
                     f"{int(target['image_id'])}.png")
    png = plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
    metrics = result.metrics or json.loads((out / "eval.json").read_text())
    print(f"demo finished: AP {100 * metrics['AP']:.2f} on {metrics['num_images']} validation images; "
          f"eval.json, predictions/ and {png.name if png else 'no loss curve'} in {out}")
    return 0


# ======================================================================================== parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assigndet", description="ATSS / PAA detectors: train, evaluate, predict.",
        epilog="Overrides are key=value pairs checked against the config schema, e.g. solver.base_lr=0.005. "
               "Add --debug to any command to see tracebacks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    p = sub.add_parser("presets", help="list presets with their published AP")
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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
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
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        if debug:
            traceback.print_exc()
        msg = " ".join(str(e).split("\n")) if str(e) else type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
            msg = f"{msg}: {e.filename}"
        print(f"assigndet: error: {msg}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        if debug:
            traceback.print_exc()
        print(f"assigndet: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("assigndet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
