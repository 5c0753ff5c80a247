"""Boxes drawn on images so that they read at a glance.

Small images are upscaled for drawing (short side ``min_side``, 512 px by default); box lines
and label text scale with the drawn image; every label sits on a filled background in its
class colour, above its box where there is room. Predictions are thinned for drawing only by
a class-agnostic NMS (IoU 0.7, highest score kept): one box per object, not one per class
that fired on it. Text uses matplotlib's DejaVu Sans when it can be found, else Pillow's
default font.
"""
from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.ops import nms

from .images import from_pil, to_pil

#: short side of a drawn image (smaller images are upscaled for drawing)
DRAW_MIN_SIDE = 512
#: IoU above which two drawn predictions are taken for the same object (class-agnostic)
DRAW_NMS_IOU = 0.7
_GAP = 8  # pixels between the two panels of a side-by-side picture
_HALO = (20, 20, 20)  # outline around boxes and labels


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at ``size`` px; Pillow's default font otherwise."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except (ImportError, OSError, ValueError):
        try:
            return ImageFont.load_default(size)  # Pillow >= 10.1: scalable
        except TypeError:
            return ImageFont.load_default()


@functools.lru_cache(maxsize=1)
def _palette() -> tuple[tuple[int, int, int], ...]:
    """20 distinct colours (matplotlib's tab20, strong shades first)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return tuple(tuple(int(round(255 * c)) for c in cmap(i)[:3]) for i in order)


def class_color(label: int) -> tuple[int, int, int]:
    """The drawing colour of class ``label`` (0-based)."""
    pal = _palette()
    return pal[int(label) % len(pal)]


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _canvas(image: torch.Tensor, min_side: int) -> tuple[Image.Image, float]:
    """The image as Pillow, upscaled (bilinear) so that its short side is at least ``min_side``."""
    pil = to_pil(image)
    scale = max(1.0, min_side / max(1, min(pil.size)))
    if scale > 1:
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BILINEAR)
    return pil, scale


def _sizes(pil: Image.Image) -> tuple[int, int]:
    """(line width, font size) for a drawn image of this size."""
    short = min(pil.size)
    return max(2, round(short / 200)), max(12, round(short / 32))


def _label(draw: ImageDraw.ImageDraw, box: Sequence[float], text: str, color, font, width: int,
           size: tuple[int, int]) -> None:
    """``text`` on a filled ``color`` background: above the box where there is room, else inside it."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, width // 2 + 1)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, box[0] - width / 2), max(0.0, size[0] - tw))
    y = box[1] - width / 2 - th if box[1] - width / 2 - th >= 0 else box[1] + width / 2
    draw.rectangle((x, y, x + tw, y + th), fill=color, outline=_HALO, width=1)
    draw.text((x + pad - left, y + pad - top), text, fill=_text_color(color), font=font)


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor, labels: Sequence[int], texts: Sequence[str], *,
               min_side: int = DRAW_MIN_SIDE) -> torch.Tensor:
    """``image`` uint8 (3, H, W), upscaled to a short side of ``min_side``, with ``boxes`` (N, 4)
    xyxy in ``image`` pixels drawn in the colours of their class ``labels`` and captioned ``texts``.
    Boxes are drawn first and captions last, so no line crosses a caption."""
    pil, scale = _canvas(image, min_side)
    width, font_size = _sizes(pil)
    font = _font(font_size)
    draw = ImageDraw.Draw(pil)
    xyxy = (boxes.detach().to("cpu", torch.float64).reshape(-1, 4) * scale).tolist()  # (N, 4)
    clipped = [[min(max(v, 0.0), lim - 1.0) for v, lim in zip(b, (pil.width, pil.height) * 2)] for b in xyxy]
    colors = [class_color(c) for c in labels]
    for b, c in zip(clipped, colors):  # a dark halo keeps a box visible on a background of its colour
        draw.rectangle((b[0] - 1, b[1] - 1, b[2] + 1, b[3] + 1), outline=_HALO, width=width + 2)
        draw.rectangle(b, outline=c, width=width)
    for b, c, t in zip(clipped, colors, texts):
        _label(draw, b, t, c, font, width, pil.size)
    return from_pil(pil)


def dedup_for_drawing(pred: Mapping[str, torch.Tensor], score_thresh: float, iou: float = DRAW_NMS_IOU
                      ) -> dict[str, torch.Tensor]:
    """The detections of ``pred`` to draw: score ≥ ``score_thresh``, then a class-agnostic NMS at
    ``iou`` (the highest score of a cluster stays, whatever its class); ordered by score."""
    keep = pred["scores"] >= score_thresh
    boxes = pred["boxes"][keep].detach().float().reshape(-1, 4)  # (N, 4)
    scores, labels = pred["scores"][keep].detach().float(), pred["labels"][keep]
    k = nms(boxes, scores, iou) if len(boxes) else torch.zeros(0, dtype=torch.int64)
    return {"boxes": boxes[k], "scores": scores[k], "labels": labels[k]}


def _name(class_names: Sequence[str], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def draw_predictions(image: torch.Tensor, pred: Mapping[str, torch.Tensor], class_names: Sequence[str],
                     score_thresh: float, *, min_side: int = DRAW_MIN_SIDE, nms_iou: float = DRAW_NMS_IOU
                     ) -> torch.Tensor:
    """``image`` (upscaled to ``min_side``) with the detections of :func:`dedup_for_drawing`
    drawn and captioned ``"<class name> <score>"``."""
    shown = dedup_for_drawing(pred, score_thresh, nms_iou)
    labels = [int(c) for c in shown["labels"]]
    texts = [f"{_name(class_names, c)} {float(s):.2f}" for c, s in zip(labels, shown["scores"])]
    return draw_boxes(image, shown["boxes"], labels, texts, min_side=min_side)


def draw_ground_truth(image: torch.Tensor, target: Mapping[str, torch.Tensor], class_names: Sequence[str], *,
                      min_side: int = DRAW_MIN_SIDE) -> torch.Tensor:
    """``image`` (upscaled to ``min_side``) with the ground-truth boxes of ``target``
    (``dict(boxes (G, 4) xyxy, labels (G,))``, as the datasets return it) captioned with their class."""
    labels = [int(c) for c in target["labels"]]
    return draw_boxes(image, target["boxes"], labels, [_name(class_names, c) for c in labels], min_side=min_side)


def _titled(panel: torch.Tensor, title: str) -> Image.Image:
    """``panel`` under a white strip holding ``title``."""
    pil = to_pil(panel)
    font = _font(_sizes(pil)[1])
    left, top, right, bottom = ImageDraw.Draw(pil).textbbox((0, 0), title, font=font)
    strip = bottom - top + 2 * _GAP
    out = Image.new("RGB", (pil.width, pil.height + strip), (255, 255, 255))
    out.paste(pil, (0, strip))
    ImageDraw.Draw(out).text((_GAP - left, _GAP - top), title, fill=(0, 0, 0), font=font)
    return out


def draw_side_by_side(image: torch.Tensor, target: Mapping[str, torch.Tensor], pred: Mapping[str, torch.Tensor],
                      class_names: Sequence[str], score_thresh: float, *, min_side: int = DRAW_MIN_SIDE,
                      titles: Optional[tuple[str, str]] = None) -> torch.Tensor:
    """The ground truth (left) beside the drawn predictions (right) of one image, each titled
    (default: ``"ground truth (G)"`` and ``"predictions ≥ thresh (N)"``); uint8 (3, H', W')."""
    shown = dedup_for_drawing(pred, score_thresh)
    if titles is None:
        titles = (f"ground truth ({len(target['labels'])})",
                  f"predictions ≥ {score_thresh:g} ({len(shown['labels'])})")
    left = _titled(draw_ground_truth(image, target, class_names, min_side=min_side), titles[0])
    right = _titled(draw_predictions(image, pred, class_names, score_thresh, min_side=min_side), titles[1])
    out = Image.new("RGB", (left.width + _GAP + right.width, max(left.height, right.height)), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + _GAP, 0))
    return from_pil(out)


__all__ = ["DRAW_MIN_SIDE", "DRAW_NMS_IOU", "class_color", "draw_boxes", "dedup_for_drawing", "draw_predictions",
           "draw_ground_truth", "draw_side_by_side"]
