"""``assigndet data check``: every problem of a COCO-format dataset, before a run meets it.

A *split* is an annotation file and the image folder its ``file_name`` entries are relative to.
:func:`find_splits` pairs ``ROOT/annotations/<prefix>_<split>.json`` with ``ROOT/<split>`` (or
``ROOT/images/<split>``): ``instances_train.json`` -> ``train/`` (the shapes layout),
``instances_val2017.json`` -> ``val2017/`` (COCO's); ``captions_*`` and ``image_info_*`` files
carry no boxes and are skipped. :func:`check_split` runs the rules of the loader
(:mod:`~assigndet.data.cocojson`: what :class:`~assigndet.data.coco.CocoDetection` would refuse is
an *error*), collecting all problems instead of stopping at the first, then decodes every image
in worker processes (:func:`inspect_image`): missing, corrupt, truncated files and sizes that
differ from the JSON are errors; what the loader converts (grayscale, transparency, CMYK, 16-bit,
an EXIF orientation it ignores) and the boxes it drops or clips are *warnings*, each saying what
the loader does.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import DatasetError
from .cocojson import group_annotations, load_json, parse_categories, parse_images
from .image import DECODE_ERRORS, EXIF_ORIENTATION, conversion, open_rgb, unreadable_reason

#: annotation files without boxes (COCO's captions and test image lists)
SKIP_PREFIXES = ("captions_", "image_info_")
ERROR, WARNING = "error", "warning"


@dataclass
class SplitReport:
    """What :func:`check_split` found in one split: ``findings[(severity, kind)] = [count, first message]``."""

    ann_file: Path
    image_dir: Path
    num_images: int = 0
    num_boxes: int = 0
    findings: dict[tuple[str, str], list] = field(default_factory=dict)

    def add(self, severity: str, kind: str, message: str) -> None:
        entry = self.findings.setdefault((severity, kind), [0, message])
        entry[0] += 1

    def count(self, severity: str) -> int:
        return sum(n for (sev, _), (n, _) in self.findings.items() if sev == severity)


def _split_name(ann_file: Path) -> str:
    stem = ann_file.stem
    return stem.split("_", 1)[1] if "_" in stem else stem


def find_splits(root: Path) -> list[tuple[Path, Path | None]]:
    """``[(annotation file, its image folder or None when none is found), ...]`` under ``root``."""
    ann_dir = root / "annotations"
    if not root.is_dir():
        raise DatasetError(f"dataset root is not a directory: {root}")
    files = sorted(p for p in ann_dir.glob("*.json") if not p.name.startswith(SKIP_PREFIXES))
    if not files:
        raise DatasetError(f"no annotation files {ann_dir}/*.json; give --ann FILE --images DIR for another layout")
    return [(ann, image_folder(root, ann)) for ann in files]


def image_folder(root: Path, ann_file: Path) -> Path | None:
    """The image folder of ``ROOT/annotations/<prefix>_<split>.json``: ``ROOT/<split>`` or
    ``ROOT/images/<split>`` (the first that exists), None when neither does."""
    split = _split_name(ann_file)
    found = [d for d in (root / split, root / "images" / split) if d.is_dir()]
    return found[0] if found else None


def _check_json(report: SplitReport) -> list[tuple[Path, int, int, int]]:
    """The JSON-level checks; returns ``[(image path, image id, width, height), ...]`` to decode."""
    src = report.ann_file
    try:
        data = load_json(src)
    except DatasetError as e:
        report.add(ERROR, "annotation file", str(e))
        return []
    problems: list = []
    labels = {c: i for i, c in enumerate(sorted(parse_categories(data["categories"], src, problems)))}
    images = parse_images(data["images"], src, problems)
    per_image = group_annotations(data["annotations"], src, images, labels, problems)
    for kind, message in problems:
        report.add(ERROR, kind, message)
    report.num_images = len(images)
    report.num_boxes = sum(map(len, per_image.values()))
    _box_warnings(report, images, per_image)
    if not data["images"]:
        report.add(ERROR, "empty split", f"{src}: the file lists no images")
    elif report.num_boxes == 0 and images:
        report.add(ERROR, "empty split", f"{src}: no image has a non-crowd box: nothing to train or evaluate on")
    return [(report.image_dir / img["file_name"], i, int(img["width"]), int(img["height"]))
            for i, (_, img) in sorted(images.items())]


def _box_warnings(report: SplitReport, images: dict, per_image: dict) -> None:
    src = report.ann_file
    for img_id, anns in per_image.items():
        img = images[img_id][1]
        where = f"{src}: image {img['file_name']} (id {img_id})"
        if not anns:
            report.add(WARNING, "image without boxes", f"{where} has no non-crowd box: left out of training "
                                                       "(data.filter_empty=true), background at evaluation")
        for x, y, w, h in (b for b, _ in anns):
            if w == 0 or h == 0:
                report.add(WARNING, "zero-size bbox", f"{where}: bbox {[x, y, w, h]} has zero size: dropped "
                                                      "(the count is logged)")
            elif x < 0 or y < 0 or x + w > img["width"] or y + h > img["height"]:
                report.add(WARNING, "bbox partly outside", f"{where}: bbox {[x, y, w, h]} passes the image border: "
                                                           "clipped to the image")


def inspect_image(item: tuple[Path, int, int, int]) -> list[tuple[str, str, str]]:
    """``[(severity, kind, message), ...]`` of one image file (decoded completely)."""
    path, img_id, width, height = item
    where = f"{path} (image id {img_id})"
    if not path.is_file():
        return [(ERROR, "missing image file", f"{where}: no such file")]
    seen: dict = {}

    def look(im: Image.Image) -> None:
        seen["conversion"] = conversion(im)
        seen["orientation"] = im.getexif().get(EXIF_ORIENTATION, 1)

    try:
        arr = open_rgb(path, inspect=look)
    except DECODE_ERRORS as e:
        reason = unreadable_reason(e)
        kind = "truncated image" if "truncated" in reason.lower() else "corrupt image"
        return [(ERROR, kind, f"{where}: {reason}")]
    found = []
    if arr.shape[:2] != (height, width):
        found.append((ERROR, "size differs from JSON", f"{where} is {arr.shape[1]}x{arr.shape[0]}, the JSON says "
                                                        f"{width}x{height}"))
    kind, what = seen["conversion"]
    if kind:
        found.append((WARNING, kind, f"{where}: {what}"))
    if seen["orientation"] not in (1, None):
        found.append((WARNING, "EXIF orientation", f"{where}: EXIF orientation {seen['orientation']} ignored: "
                                                    "pixels used as stored (boxes must be in stored pixels)"))
    return found


def _decode_all(items: list, workers: int, progress: bool, desc: str) -> Iterable[list]:
    from tqdm import tqdm

    bar = dict(total=len(items), desc=desc, disable=not progress, unit="img", mininterval=0.5, dynamic_ncols=True)
    if workers <= 1 or len(items) < 2 * workers:
        yield from tqdm(map(inspect_image, items), **bar)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)  # workers need no torch
    with ctx.Pool(workers) as pool:
        yield from tqdm(pool.imap(inspect_image, items, chunksize=8), **bar)


def check_split(ann_file: Path, image_dir: Path | None, *, workers: int = 2, progress: bool = True) -> SplitReport:
    """Every check of the module docstring on one split."""
    report = SplitReport(ann_file, image_dir if image_dir is not None else Path("?"))
    if not ann_file.is_file():
        report.add(ERROR, "annotation file", f"annotation file not found: {ann_file}")
        return report
    if image_dir is None or not image_dir.is_dir():
        looked = image_dir if image_dir is not None else f"{ann_file.parent.parent / _split_name(ann_file)}"
        report.add(ERROR, "image folder", f"{ann_file}: no image folder {looked}; give --ann FILE --images DIR")
        return report
    items = _check_json(report)
    for found in _decode_all(items, workers, progress, desc=ann_file.name):
        for severity, kind, message in found:
            report.add(severity, kind, message)
    return report


def format_report(reports: list[SplitReport], root: Path | None = None) -> str:
    """The summary table, then each kind of problem with its count and first occurrence."""
    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root)) if root is not None else str(p)
        except ValueError:
            return str(p)

    rows = [("annotation file", "images", "boxes", "errors", "warnings")]
    rows += [(rel(r.ann_file), str(r.num_images), str(r.num_boxes), str(r.count(ERROR)), str(r.count(WARNING)))
             for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    for r in reports:
        for (severity, kind), (n, first) in sorted(r.findings.items()):
            lines.append(f"{severity:<7}  {rel(r.ann_file)}: {kind} x{n}, first: {first}")
    return "\n".join(lines)


def check_dataset(root: str | os.PathLike | None = None, *, ann: str | os.PathLike | None = None,
                  images: str | os.PathLike | None = None, workers: int = 2, progress: bool = True
                  ) -> list[SplitReport]:
    """:func:`check_split` on every split of ``root`` (:func:`find_splits`), or on ``ann`` with
    ``images`` (relative to ``root`` when it is given, as ``data.root`` takes them)."""
    base = Path(root) if root is not None else None
    if ann is not None or images is not None:
        if ann is None or images is None:
            raise DatasetError("--ann and --images go together (the annotation file and its image folder)")
        ann_p, img_p = Path(ann), Path(images)
        if base is not None:
            ann_p, img_p = (p if p.is_absolute() else base / p for p in (ann_p, img_p))
        pairs = [(ann_p, img_p)]
    elif base is None:
        raise DatasetError("give a dataset ROOT, or --ann FILE --images DIR")
    else:
        pairs = find_splits(base)
    return [check_split(a, d, workers=workers, progress=progress) for a, d in pairs]


__all__ = ["SplitReport", "check_dataset", "check_split", "find_splits", "format_report", "image_folder",
           "inspect_image",
           "ERROR", "WARNING"]
