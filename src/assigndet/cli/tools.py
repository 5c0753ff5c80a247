"""``presets``, ``convert`` and ``data``: the commands about presets, weights files and datasets."""
from __future__ import annotations

from pathlib import Path

from ..config import config_to_yaml
from ..errors import InputError
from ..presets import PRESETS, PUBLISHED_AP, PUBLISHED_NOTES, get_preset, load_config
from .common import check_weights_file


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
    from ..checkpoints import load_weights, save_weights
    from ..detectors import build_model

    src, dst = Path(args.input), Path(args.output)
    check_weights_file(args.input)
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


def _shapes_arguments(args) -> dict:
    """The ``data shapes`` options as generate_shapes arguments; a bad value is one InputError line."""
    from ..data.shapes import DEFAULT_MAX_SIDE, DEFAULT_MIN_SIDE, MIN_SIDE

    for flag, value in (("--train", args.train), ("--val", args.val), ("--seed", args.seed)):
        if value < 0:
            raise InputError(f"data shapes: {flag} must be >= 0, got {value}")
    lo = DEFAULT_MIN_SIDE if args.min_side is None else args.min_side
    hi = DEFAULT_MAX_SIDE if args.max_side is None else args.max_side
    if lo < MIN_SIDE:
        raise InputError(f"data shapes: --min-side must be >= {MIN_SIDE}, got {lo}")
    if lo > hi:
        given = lambda v: "" if v is not None else " (the default)"  # noqa: E731
        raise InputError(f"data shapes: --min-side {lo}{given(args.min_side)} is larger than "
                         f"--max-side {hi}{given(args.max_side)}")
    return dict(num_train=args.train, num_val=args.val, seed=args.seed, min_side=lo, max_side=hi)


def cmd_data_shapes(args) -> int:
    from ..data import generate_shapes

    kwargs = _shapes_arguments(args)
    try:
        info = generate_shapes(args.out, **kwargs)
    except OSError as e:
        raise InputError(f"data shapes: cannot write to {args.out}: {e.strerror or e}") from None
    print(f"wrote {info['train']['num_images']} train and {info['val']['num_images']} val images "
          f"({info['train']['num_annotations'] + info['val']['num_annotations']} boxes) to {info['root']}")
    return 0


def cmd_data_check(args) -> int:
    """Exit 0: no errors (warnings may be listed); 1: errors found; 2 (UserError): nothing to check."""
    from ..data.check import ERROR, check_dataset, format_report

    if args.workers < 1:
        raise InputError(f"data check: --workers must be >= 1, got {args.workers}")
    reports = check_dataset(args.root, ann=args.ann, images=args.images, workers=args.workers,
                            progress=not args.no_progress)
    print(format_report(reports, Path(args.root) if args.root else None))
    errors = sum(r.count(ERROR) for r in reports)
    print(f"{errors} error(s) in {len(reports)} split(s)" if errors else f"no errors in {len(reports)} split(s)")
    return 1 if errors else 0


def register(sub) -> None:
    """data, presets, convert."""
    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATASET")
    q = dsub.add_parser("shapes", help="generate the COCO-format shapes dataset")
    q.add_argument("--out", required=True, help="dataset root to write (annotations/, train/, val/)")
    q.add_argument("--train", type=int, default=1000, help="training images")
    q.add_argument("--val", type=int, default=200, help="validation images")
    q.add_argument("--seed", type=int, default=0, help="the dataset is a function of the seed")
    q.add_argument("--min-side", type=int, default=None, help="smallest image side (default: 160)")
    q.add_argument("--max-side", type=int, default=None, help="largest image side (default: 320)")
    q.set_defaults(func=cmd_data_shapes, overrides=[])
    q = dsub.add_parser("check", help="check a COCO-format dataset (JSON, ids, boxes, every image decoded); "
                                      "exit 0 no errors, 1 errors found")
    q.add_argument("root", nargs="?", default=None, metavar="ROOT",
                   help="dataset root as data.root takes it: every ROOT/annotations/*.json with its image folder")
    q.add_argument("--ann", default=None, metavar="FILE", help="one annotation file (relative to ROOT if given)")
    q.add_argument("--images", default=None, metavar="DIR", help="the image folder of --ann")
    q.add_argument("--workers", type=int, default=2, help="image decoding processes")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_data_check, overrides=[])

    p = sub.add_parser("presets", help="list presets with their published AP, or --show one's config")
    p.add_argument("--show", metavar="NAME", default=None, help="print the resolved config of preset NAME (YAML)")
    p.set_defaults(func=cmd_presets, overrides=[])

    p = sub.add_parser("convert", help="convert a released .pth checkpoint to .safetensors for a preset")
    p.add_argument("input", metavar="IN.pth", help="a released checkpoint (maskrcnn-benchmark, PAA_minimal, mmdet)")
    p.add_argument("output", metavar="OUT.safetensors", help="the converted weights (with the config stored)")
    p.add_argument("--preset", required=True, help="the preset whose model the checkpoint belongs to")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.num_classes=7")
    p.set_defaults(func=cmd_convert)
