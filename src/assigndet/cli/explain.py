"""``explain``: which anchors ATSS, PAA and Dynamic ATSS make positive for each box of one image."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import InputError
from ..presets import load_config
from .browse import SPLITS, dataset_files
from .common import check_weights_file

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


class _IntermixedParser(argparse.ArgumentParser):
    """The explain parser takes options and positionals in any order (``PRESET --weights W IMAGE
    --boxes JSON``), by argparse's intermixed parsing; that parsing calls ``parse_known_args`` itself
    (twice), which then is the plain one."""

    _nested = False

    def parse_known_args(self, args=None, namespace=None):
        if self._nested:
            return super().parse_known_args(args, namespace)
        self._nested = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._nested = False


def _check_source(args) -> None:
    """IMAGE --boxes JSON, or --dataset DIR --image-id N: exactly one of the two."""
    if args.image is not None and _OVERRIDE.match(args.image) and not Path(args.image).exists():
        args.overrides = [args.image, *args.overrides]  # argparse put an override in IMAGE's place
        args.image = None
    from_file = args.image is not None or args.boxes is not None
    from_dataset = args.dataset is not None or args.image_id is not None
    if from_file == from_dataset:
        raise InputError("explain needs either IMAGE --boxes JSON or --dataset DIR --image-id N")
    if from_file and (args.image is None or args.boxes is None):
        raise InputError("explain: IMAGE and --boxes JSON go together (the boxes of that image)")
    if from_dataset and (args.dataset is None or args.image_id is None):
        raise InputError("explain: --dataset DIR and --image-id N go together")


def cmd_explain(args) -> int:
    from ..evaluation import weights_config
    from ..explain import explain

    _check_source(args)
    if args.weights:
        check_weights_file(args.weights)
        cfg = weights_config(args.weights, preset=args.preset, overrides=args.overrides)
    else:
        cfg = load_config(args.preset, args.overrides)
    dataset = None
    if args.dataset is not None:
        image_dir, ann = dataset_files(args.dataset, args.split, args.ann, args.images)
        dataset = (image_dir, ann)
    result = explain(cfg, args.out, preset=args.preset, weights=args.weights, image=args.image, boxes=args.boxes,
                     dataset=dataset, image_id=args.image_id)
    n = len(result.report["gts"])
    print(f"explained {n} GT{'s' if n != 1 else ''} of {result.report['image']}: {result.html} "
          f"({len(result.figures)} figures, numbers in {result.json.name})")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "explain", help="show the positive anchors of ATSS, PAA and Dynamic ATSS for each box of an image",
        description="For every ground-truth box of one image: the positive anchors of ATSS, PAA and Dynamic ATSS "
                    "applied to the same head outputs of PRESET's model (per FPN level), ATSS's IoU threshold, "
                    "PAA's fitted Gaussians and cut, Dynamic ATSS's combined IoU. Writes PNG figures, "
                    "explain.json and a self-contained index.html into --out.")
    p.add_argument("preset", help="a dense preset (atss / paa / dynamic_atss ...): its backbone, head, anchors "
                                  "and conventions")
    p.add_argument("image", nargs="?", default=None, help="an image file (with --boxes)")
    p.add_argument("--boxes", default=None, metavar="JSON",
                   help='the boxes of IMAGE in its pixels: [{"box": [x1, y1, x2, y2], "label": 0 or "name"}, ...] '
                        '(or COCO "bbox": [x, y, w, h]); default: none')
    p.add_argument("--weights", default=None,
                   help="weights of the model; its config is the config.yaml beside them, else the one stored in "
                        "the file, else PRESET's, as for predict (default: none, an untrained head with seeded "
                        "random init)")
    p.add_argument("--dataset", default=None, metavar="DIR",
                   help="a COCO-format dataset folder, laid out as for `assigndet browse`: DIR/annotations/"
                        "instances_<split>.json + DIR/<split>/ (shapes), or instances_val2017.json + val2017/ "
                        "(COCO); default: none")
    p.add_argument("--image-id", type=int, default=None, metavar="N", help="the image id in --dataset (default: none)")
    p.add_argument("--split", choices=SPLITS, default="val", help="split of --dataset (default: val)")
    p.add_argument("--ann", default=None, help="annotation file of --dataset for another layout (default: found)")
    p.add_argument("--images", default=None, help="image directory of --dataset for another layout (default: found)")
    p.add_argument("--out", required=True, help="output directory (index.html, explain.json, PNG figures)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.topk=12")
    p.set_defaults(func=cmd_explain)
    p.__class__ = _IntermixedParser  # the subparser argparse made, parsing intermixed
