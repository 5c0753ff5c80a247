"""The generated "shapes" dataset: a small, learnable, real COCO-format detection dataset.

Each image is a textured background (two-colour gradient, low-frequency blotches, pixel noise,
a few random lines) with 0..8 filled shapes drawn on top of each other. The *silhouette* decides
the class; colour and fill texture (solid, stripes, checker, noise) are random, so a detector has
to learn shape, not colour. Later shapes are drawn over earlier ones (partial occlusion); the
annotated box is always the full extent of the shape. Sizes run from 8 px to ~80 % of the
image's short side, image sides are drawn independently (both aspect-ratio groups occur) and
about 5 % of the images contain no object.

Category ids are deliberately not contiguous (1, 2, 3, 5, 7, 9, 11) so that the id <-> label
mapping of the datasets is exercised.

Generation is deterministic: every image has its own ``numpy.random.default_rng((seed, split,
index))``, JSON is written with a fixed layout, so the same arguments give byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: (COCO category id, name); ids are non-contiguous on purpose.
CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "circle"),
    (2, "rectangle"),
    (3, "triangle"),
    (5, "star"),
    (7, "cross"),
    (9, "ring"),
    (11, "diamond"),
)

EMPTY_IMAGE_PROB = 0.05  # fraction of images without any object
SMALL_OBJECT_PROB = 0.15  # fraction of objects drawn from [min_object, SMALL_OBJECT_MAX]
SMALL_OBJECT_MAX = 20.0
MAX_OBJECTS = 8
MAX_COVERED_FRACTION = 0.3  # a new shape's box may cover at most this fraction of an older box
PLACEMENT_TRIES = 15
SUPERSAMPLE = 3  # shapes are rasterised at 3x and box-filtered down (anti-aliased edges)
MIN_CONTRAST = 60.0  # luminance difference between a shape's colour and the local background
JPEG_QUALITY = 92
_SPLIT_CODES = {"train": 0, "val": 1}
DEFAULT_MIN_SIDE, DEFAULT_MAX_SIDE = 160, 320
MIN_SIDE = 16  # the smallest image side generate_shapes accepts


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Gradient + low-frequency blotches + pixel noise + a few random lines."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    bg = c0 + (c1 - c0) * t[..., None]  # (H, W, 3)
    coarse = rng.normal(0.0, rng.uniform(5, 25), size=(height // 32 + 2, width // 32 + 2, 3))
    coarse_img = Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8))
    bg += np.asarray(coarse_img.resize((width, height), Image.BILINEAR), dtype=np.float32) - 128
    bg += rng.normal(0.0, rng.uniform(2, 12), size=bg.shape).astype(np.float32)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 5))):
        x0, x1 = rng.uniform(0, width, size=2)
        y0, y1 = rng.uniform(0, height, size=2)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
    return img


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _regular_polygon(n: int, phase: float = -math.pi / 2) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack((np.cos(a), np.sin(a)), axis=1)


def _shape_mask(rng: np.random.Generator, name: str, size: float) -> Image.Image:
    """Anti-aliased "L" mask of one shape whose longer extent is about ``size`` pixels.

    The mask canvas has a 1-px margin; the shape's box is measured from the mask afterwards.
    """
    ss = SUPERSAMPLE
    if name in ("circle", "ring"):
        aspect = rng.uniform(0.85, 1.15)
        w, h = (size, size / aspect) if aspect >= 1 else (size * aspect, size)
        cw, ch = int(math.ceil(w)) + 2, int(math.ceil(h)) + 2
        mask = Image.new("L", (cw * ss, ch * ss), 0)
        draw = ImageDraw.Draw(mask)
        x0, y0 = (cw - w) / 2 * ss, (ch - h) / 2 * ss
        draw.ellipse([x0, y0, x0 + w * ss, y0 + h * ss], fill=255)
        if name == "ring":
            r = rng.uniform(0.45, 0.62)
            cx, cy = cw / 2 * ss, ch / 2 * ss
            draw.ellipse([cx - r * w / 2 * ss, cy - r * h / 2 * ss,
                          cx + r * w / 2 * ss, cy + r * h / 2 * ss], fill=0)
        return mask.resize((cw, ch), Image.BOX)

    if name == "rectangle":
        aspect = rng.uniform(0.5, 2.0)
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
        pts = pts * (aspect, 1.0)
        pts = _rotate(pts, math.radians(rng.uniform(-8, 8)))
    elif name == "diamond":
        pts = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], dtype=np.float64)
        pts = pts * (rng.uniform(0.6, 1.0), 1.0)
        pts = _rotate(pts, math.radians(rng.uniform(-10, 10)))
    elif name == "triangle":
        pts = _regular_polygon(3) * (rng.uniform(0.8, 1.2), 1.0)
        pts = _rotate(pts, rng.uniform(0, 2 * math.pi))
    elif name == "star":
        outer = _regular_polygon(5)
        inner = _regular_polygon(5, -math.pi / 2 + math.pi / 5) * rng.uniform(0.38, 0.5)
        pts = np.stack((outer, inner), axis=1).reshape(10, 2)  # alternate outer/inner vertices
        pts = _rotate(pts, rng.uniform(0, 2 * math.pi))
    elif name == "cross":
        a = rng.uniform(0.28, 0.4)  # half arm width
        pts = np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                        [-a, a], [-1, a], [-1, -a], [-a, -a]], dtype=np.float64)
        pts = _rotate(pts, rng.uniform(0, math.pi / 2))
    else:  # pragma: no cover - guarded by CATEGORIES
        raise ValueError(f"unknown shape {name!r}")
    extent = pts.max(axis=0) - pts.min(axis=0)  # (2,)
    pts = (pts - pts.min(axis=0)) * (size / extent.max()) + 1.0  # 1-px margin
    cw, ch = (int(math.ceil(v)) + 2 for v in extent * (size / extent.max()))
    mask = Image.new("L", (cw * ss, ch * ss), 0)
    ImageDraw.Draw(mask).polygon([(float(x) * ss, float(y) * ss) for x, y in pts], fill=255)
    return mask.resize((cw, ch), Image.BOX)


def _texture(rng: np.random.Generator, width: int, height: int, bg_rgb: np.ndarray) -> Image.Image:
    """A fill of (height, width) in a colour that contrasts with ``bg_rgb``."""
    bg_l = _luma(bg_rgb)
    colour = rng.integers(0, 256, size=3).astype(np.float32)
    for _ in range(10):
        if abs(_luma(colour) - bg_l) >= MIN_CONTRAST:
            break
        colour = rng.integers(0, 256, size=3).astype(np.float32)
    else:
        colour = np.full(3, 0.0 if bg_l > 127 else 255.0, dtype=np.float32)
    # The second texture colour moves further away from the background, never towards it.
    if _luma(colour) >= bg_l:
        second = colour + (255 - colour) * 0.5
    else:
        second = colour * 0.5
    kind = rng.choice(4, p=[0.4, 0.2, 0.2, 0.2])  # solid, stripes, checker, noise
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:
        sel = np.zeros((height, width), dtype=bool)
    elif kind == 1:
        period = rng.uniform(3, 8)
        angle = rng.uniform(0, math.pi)
        sel = ((xx * math.cos(angle) + yy * math.sin(angle)) / period) % 2 < 1
    elif kind == 2:
        period = int(rng.integers(2, 7))
        sel = ((xx.astype(np.int64) // period + yy.astype(np.int64) // period) % 2) == 1
    else:
        sel = np.zeros((height, width), dtype=bool)
    fill = np.where(sel[..., None], second, colour)  # (H, W, 3)
    if kind == 3:
        fill = fill + rng.normal(0, 25, size=fill.shape)
    return Image.fromarray(np.clip(fill, 0, 255).astype(np.uint8), "RGB")


def _covered_too_much(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box  # exclusive right/bottom
    for a0, b0, a1, b1 in boxes:
        iw = min(x1, a1) - max(x0, a0)
        ih = min(y1, b1) - max(y0, b0)
        if iw > 0 and ih > 0 and iw * ih > MAX_COVERED_FRACTION * (a1 - a0) * (b1 - b0):
            return True
    return False


def _render(rng: np.random.Generator, width: int, height: int, *, min_object: float,
            max_object_frac: float) -> tuple[Image.Image, list[dict]]:
    """One image and its annotations (bbox xywh, area, category_id; no ids yet)."""
    img = _background(rng, width, height)
    anns: list[dict] = []
    if rng.random() < EMPTY_IMAGE_PROB:
        return img, anns
    short = min(width, height)
    max_size = max(max_object_frac * short, min_object + 1)
    num = 1 + min(int(rng.poisson(1.8)), MAX_OBJECTS - 1)
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(num):
        cat_index = int(rng.integers(len(CATEGORIES)))
        if rng.random() < SMALL_OBJECT_PROB:
            size = rng.uniform(min_object, min(SMALL_OBJECT_MAX, max_size))
        else:
            lo = min(SMALL_OBJECT_MAX, max_size)
            size = math.exp(rng.uniform(math.log(lo), math.log(max_size)))
        mask = _shape_mask(rng, CATEGORIES[cat_index][1], size)
        cw, ch = mask.size
        if cw > width or ch > height:
            continue
        for _ in range(PLACEMENT_TRIES):
            x0 = int(rng.integers(0, width - cw + 1))
            y0 = int(rng.integers(0, height - ch + 1))
            if not _covered_too_much((x0, y0, x0 + cw, y0 + ch), placed):
                break
        else:
            continue
        m = np.asarray(mask) > 127  # (ch, cw)
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size == 0:
            continue
        region = np.asarray(img.crop((x0, y0, x0 + cw, y0 + ch)), dtype=np.float32)
        bg_rgb = region[m].mean(axis=0)
        img.paste(_texture(rng, cw, ch, bg_rgb), (x0, y0), mask)
        bx, by = x0 + int(cols[0]), y0 + int(rows[0])
        bw, bh = int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
        placed.append((bx, by, bx + bw, by + bh))
        anns.append({"category_id": CATEGORIES[cat_index][0], "bbox": [bx, by, bw, bh],
                     "area": float(m.sum())})
    return img, anns


def _write_split(out_dir: Path, split: str, num_images: int, *, seed: int, min_side: int,
                 max_side: int, min_object: float, max_object_frac: float) -> dict:
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng((seed, _SPLIT_CODES[split], index))
        width = int(rng.integers(min_side, max_side + 1))
        height = int(rng.integers(min_side, max_side + 1))
        img, anns = _render(rng, width, height, min_object=min_object,
                            max_object_frac=max_object_frac)
        file_name = f"{split}_{index:06d}.jpg"
        img.save(image_dir / file_name, format="JPEG", quality=JPEG_QUALITY)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann,
                                "iscrowd": 0, "segmentation": []})
    coco = {
        "info": {"description": f"assigndet shapes ({split}, seed {seed})", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"}
                       for cid, name in CATEGORIES],
    }
    ann_file = out_dir / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(coco, indent=None, separators=(",", ":")) + "\n")
    return {"image_root": str(image_dir), "ann_file": str(ann_file), "num_images": len(images),
            "num_annotations": len(annotations)}


def generate_shapes(out_dir: str | Path, *, num_train: int = 1000, num_val: int = 200, seed: int = 0,
                    min_side: int = DEFAULT_MIN_SIDE, max_side: int = DEFAULT_MAX_SIDE, min_object: float = 8.0,
                    max_object_frac: float = 0.8) -> dict:
    """Write the "shapes" detection dataset in COCO format under ``out_dir``.

    Layout::

        out_dir/train/train_000000.jpg ...      out_dir/annotations/instances_train.json
        out_dir/val/val_000000.jpg ...          out_dir/annotations/instances_val.json

    Seven classes (circle, rectangle, triangle, star, cross, ring, diamond) with the
    non-contiguous COCO ids 1, 2, 3, 5, 7, 9, 11. Image sides are drawn uniformly from
    ``[min_side, max_side]`` (width and height independently); object sizes range from
    ``min_object`` pixels to ``max_object_frac`` of the short side. Boxes are COCO ``xywh``
    in integer pixels covering the full shape (x, y = first pixel; w, h = pixel counts).

    Deterministic: the same arguments write byte-identical files. This is what
    ``assigndet data shapes --out DIR --train N --val M --seed S`` runs.

    Returns ``{"root", "categories", "train": {...}, "val": {...}}`` where each split holds
    ``image_root``, ``ann_file``, ``num_images`` and ``num_annotations``.
    """
    if num_train < 0 or num_val < 0 or seed < 0:
        raise ValueError(f"num_train, num_val and seed must be >= 0, got {num_train}, {num_val}, {seed}")
    if not MIN_SIDE <= min_side <= max_side:
        raise ValueError(f"need {MIN_SIDE} <= min_side <= max_side, got {min_side}, {max_side}")
    if not 1 <= min_object < max_object_frac * min_side:
        raise ValueError(f"need 1 <= min_object < max_object_frac * min_side, got "
                         f"min_object={min_object}, max_object_frac={max_object_frac}")
    out = Path(out_dir)
    kwargs = dict(seed=seed, min_side=min_side, max_side=max_side, min_object=min_object,
                  max_object_frac=max_object_frac)
    return {
        "root": str(out),
        "categories": [{"id": cid, "name": name} for cid, name in CATEGORIES],
        "train": _write_split(out, "train", num_train, **kwargs),
        "val": _write_split(out, "val", num_val, **kwargs),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m assigndet.data.shapes --out DIR [--train N] [--val M] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="assigndet data shapes",
                                     description=generate_shapes.__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train", type=int, default=1000, help="number of training images")
    parser.add_argument("--val", type=int, default=200, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE)
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE)
    args = parser.parse_args(argv)
    info = generate_shapes(args.out, num_train=args.train, num_val=args.val, seed=args.seed,
                           min_side=args.min_side, max_side=args.max_side)
    for split in ("train", "val"):
        s = info[split]
        print(f"{split}: {s['num_images']} images, {s['num_annotations']} boxes -> {s['ann_file']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
