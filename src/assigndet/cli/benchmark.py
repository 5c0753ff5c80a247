"""``benchmark``: latency, training-step time with a per-stage breakdown, peak memory and FLOPs of a
preset beside torchvision's detector of the same kind (:mod:`assigndet.profile`)."""
from __future__ import annotations

import json
from pathlib import Path


def cmd_benchmark(args) -> int:
    from ..profile import format_table, run_benchmark

    result = run_benchmark(args.preset, image_size=tuple(args.image_size), device=args.device, repeats=args.repeats,
                           threads=args.threads, overrides=tuple(args.overrides),
                           torchvision=not args.no_torchvision, num_boxes=args.boxes)
    print(format_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


def register(sub) -> None:
    """benchmark."""
    p = sub.add_parser("benchmark", help="time inference and a training step per stage, peak memory, FLOPs, "
                                         "beside torchvision's FCOS / Faster R-CNN (random weights)")
    p.add_argument("preset", help="the preset to build (`assigndet presets` lists them)")
    p.add_argument("--image-size", nargs=2, type=int, default=[512, 640], metavar=("H", "W"),
                   help="synthetic input image size before the preset's resize (default: 512 640)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto = the config's device)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds after one warm-up (default: 3)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--boxes", type=int, default=4, help="ground-truth boxes on the synthetic image (default: 4)")
    p.add_argument("--no-torchvision", action="store_true", help="skip the torchvision detector")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON to FILE")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.score_thresh=0.1")
    p.set_defaults(func=cmd_benchmark)
