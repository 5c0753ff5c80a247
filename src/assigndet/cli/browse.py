"""``browse``: a look at a detection dataset before training on it."""
from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError

SPLITS = ("train", "val")


def dataset_files(root: str, split: str, ann: str | None, images: str | None) -> tuple[Path, Path]:
    """(image directory, annotation file) of ``split`` under ``root``: ``--ann`` / ``--images``
    when given (relative to ``root`` unless absolute), else the shapes / ``data.root`` layout
    ``ROOT/annotations/instances_<split>.json`` + ``ROOT/<split>``, else COCO's
    ``ROOT/annotations/instances_<split>*.json`` + the folder :func:`assigndet.data.check.image_folder`
    pairs with it (``instances_val2017.json`` -> ``ROOT/val2017`` or ``ROOT/images/val2017``)."""
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"dataset directory not found: {base}")
    under = lambda p: Path(p) if Path(p).is_absolute() else base / p  # noqa: E731
    if ann:
        return (under(images) if images else base / split), under(ann)
    found = base / "annotations" / f"instances_{split}.json"
    if not found.is_file():
        matches = sorted((base / "annotations").glob(f"instances_{split}*.json"))
        if len(matches) != 1:
            raise DatasetError(f"no annotations/instances_{split}.json in {base}"
                               + (f" (several candidates: {', '.join(m.name for m in matches)})" if matches else "")
                               + "; pass --ann FILE --images DIR")
        found = matches[0]
    if images:
        return under(images), found
    from ..data.check import image_folder  # the one pairing rule of `data check` (loads torch: here only)

    folder = image_folder(base, found)
    if folder is None:
        raise DatasetError(f"no image folder for {found} in {base} (looked for {base / found.stem.split('_', 1)[-1]} "
                           "and under images/); pass --images DIR")
    return folder, found


def cmd_browse(args) -> int:
    from ..data import CocoDetection
    from ..viz import write_browse

    image_dir, ann = dataset_files(args.dataset, args.split, args.ann, args.images)
    dataset = CocoDetection(image_dir, ann, train=False)
    summary = write_browse(dataset, args.out, n=args.n)
    out = Path(args.out)
    sizes = ", ".join(f"{k} {v}" for k, v in summary["boxes_per_size"].items())
    print(f"{ann}: {summary['num_images']} images, {summary['num_boxes']} boxes ({sizes}), "
          f"{len(summary['boxes_per_class'])} classes")
    width = max((len(n) for n in summary["boxes_per_class"]), default=5)
    for name, count in summary["boxes_per_class"].items():
        print(f"  {name:<{width}}  {count:6d} boxes in {summary['images_per_class'][name]:5d} images")
    print(f"{len(summary['samples'])} drawn images, class_counts.png, box_sizes.png, summary.json and "
          f"index.html in {out}")
    return 0


def register(sub) -> None:
    """browse."""
    p = sub.add_parser(
        "browse", help="draw a dataset's ground truth on sample images, count its boxes per class and size",
        description="Writes OUT/images/<image id>.jpg (ground truth with class names), class_counts.png, "
                    "box_sizes.png (sqrt(area) with COCO's small/medium/large boundaries 32 and 96), "
                    "summary.json and index.html. DATASET is a directory laid out as the shapes dataset "
                    "(annotations/instances_<split>.json, <split>/) or as COCO (annotations/instances_val2017.json, "
                    "val2017/); --ann and --images name the files of any other layout.")
    p.add_argument("dataset", metavar="DATASET", help="dataset root directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=8, help="sample images to draw (default: 8)")
    p.add_argument("--split", choices=SPLITS, default="val", help="split to browse (default: val)")
    p.add_argument("--ann", default=None, help="COCO annotation file (default: from DATASET and --split)")
    p.add_argument("--images", default=None, help="image directory (default: from DATASET and --split)")
    p.set_defaults(func=cmd_browse)
