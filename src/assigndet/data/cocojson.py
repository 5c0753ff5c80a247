"""The COCO annotation file at the JSON level: reading it and validating its entries.

Each check either raises a one-line :class:`DatasetError` at the first problem (``problems=None``:
how :class:`~assigndet.data.coco.CocoDetection` reads a file) or records every problem as
``(kind, message)`` in a list and goes on (``assigndet data check``). One set of rules for both.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from ..errors import DatasetError

#: ``[(kind, message), ...]`` or None (raise at the first problem)
Problems = Optional[list]


def fail(problems: Problems, kind: str, message: str) -> None:
    """Raise ``DatasetError(message)``, or record ``(kind, message)`` when collecting."""
    if problems is None:
        raise DatasetError(message)
    problems.append((kind, message))


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_json(ann_file: Path) -> dict:
    """The parsed annotation file: a JSON object with the lists ``images``, ``annotations`` and
    ``categories`` (a DatasetError names the file and, for bad JSON, the position)."""
    try:
        text = ann_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{ann_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DatasetError(f"{ann_file}: cannot read annotation file ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{ann_file}: malformed JSON at line {e.lineno} column {e.colno} "
                           f"(char {e.pos}): {e.msg}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{ann_file}: missing or non-list '{key}'")
    return data


def _has_int_id(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("id"), int) and not isinstance(entry.get("id"), bool)


def parse_categories(categories: list, src: Path, problems: Problems = None) -> dict[int, str]:
    """``{category id: name}``; ids must be unique integers, and there must be one at least."""
    names: dict[int, str] = {}
    for k, cat in enumerate(categories):
        if not _has_int_id(cat):
            fail(problems, "category", f"{src}: category #{k} has no integer 'id': {cat!r}")
        elif cat["id"] in names:
            fail(problems, "duplicate id", f"{src}: duplicate category id {cat['id']}")
        else:
            names[cat["id"]] = str(cat.get("name", cat["id"]))
    if not names:
        fail(problems, "category", f"{src}: no categories")
    return names


def _image_problem(img: dict, src: Path) -> Optional[str]:
    if not isinstance(img.get("file_name"), str) or not img["file_name"]:
        return f"{src}: image id {img['id']} has no 'file_name'"
    for key in ("width", "height"):
        v = img.get(key)
        if not is_number(v) or v != int(v) or v <= 0:
            return f"{src}: image {img['file_name']} (id {img['id']}) has an invalid '{key}': {v!r}"
    return None


def parse_images(entries: list, src: Path, problems: Problems = None) -> dict[int, tuple[int, dict]]:
    """``{image id: (row in the JSON list, entry)}``, each with a file name and a positive integer size."""
    images: dict[int, tuple[int, dict]] = {}
    for k, img in enumerate(entries):
        if not _has_int_id(img):
            fail(problems, "image entry", f"{src}: image #{k} has no integer 'id': {str(img)[:200]}")
        elif img["id"] in images:
            fail(problems, "duplicate id", f"{src}: duplicate image id {img['id']}")
        elif (msg := _image_problem(img, src)) is not None:
            fail(problems, "image entry", msg)
        else:
            images[img["id"]] = (k, img)
    return images


def _bbox_problem(bbox: Any, img: dict, crowd: bool) -> Optional[tuple[str, str]]:
    """``(kind, what)`` of a box the loader refuses, None for a usable one."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(is_number, bbox)):
        return "bad bbox", f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    if not all(map(math.isfinite, (x, y, w, h))):
        return "non-finite bbox", f"bbox has non-finite values {bbox!r}"
    if w < 0 or h < 0:
        return "negative bbox", f"bbox has negative size {bbox!r}"
    if not crowd and w > 0 and h > 0 and (x >= img["width"] or y >= img["height"] or x + w <= 0 or y + h <= 0):
        return "bbox outside image", (f"bbox {bbox!r} lies entirely outside the "
                                      f"{img['width']}x{img['height']} image")
    return None


def check_annotation(k: int, ann: Any, src: Path, images: dict[int, tuple[int, dict]],
                     labels: dict[int, int], problems: Problems = None) -> Optional[tuple[list[float], dict]]:
    """The ``[x, y, w, h]`` box of annotation #``k`` and its image entry; a problem raises (or is
    recorded, and None returned)."""
    if not isinstance(ann, dict):
        return fail(problems, "annotation entry", f"{src}: annotation #{k} is not an object")
    aid = ann.get("id", f"#{k}")
    if ann.get("image_id") not in images:
        return fail(problems, "unknown image", f"{src}: annotation id {aid} refers to unknown image_id "
                                               f"{ann.get('image_id')!r}")
    img = images[ann["image_id"]][1]
    where = f"{src}: annotation id {aid} (image {img['file_name']})"
    if ann.get("category_id") not in labels:
        return fail(problems, "unknown category", f"{where}: unknown category_id {ann.get('category_id')!r}")
    bad = _bbox_problem(ann.get("bbox"), img, bool(ann.get("iscrowd", 0)))
    if bad is not None:
        return fail(problems, bad[0], f"{where}: {bad[1]}")
    return [float(v) for v in ann["bbox"]], img


def group_annotations(annotations: list, src: Path, images: dict[int, tuple[int, dict]], labels: dict[int, int],
                      problems: Problems = None) -> dict[int, list[tuple[list[float], int]]]:
    """``{image id: [([x, y, w, h], label), ...]}`` of the non-crowd annotations (crowd ones are
    validated, not kept); annotation ids, where given, must be unique."""
    per_image: dict[int, list[tuple[list[float], int]]] = {i: [] for i in images}
    seen: set = set()
    for k, ann in enumerate(annotations):
        aid = ann.get("id") if isinstance(ann, dict) else None
        aid = aid if isinstance(aid, (int, str)) and not isinstance(aid, bool) else None
        if aid is not None and aid in seen:
            fail(problems, "duplicate id", f"{src}: duplicate annotation id {aid}")
            continue
        seen.add(aid)
        checked = check_annotation(k, ann, src, images, labels, problems)
        if checked is None or ann.get("iscrowd", 0):
            continue
        per_image[ann["image_id"]].append((checked[0], labels[ann["category_id"]]))
    return per_image


__all__ = ["load_json", "parse_categories", "parse_images", "check_annotation", "group_annotations", "fail",
           "is_number", "Problems"]
