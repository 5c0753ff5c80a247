"""Reading an image file as the models see it: RGB uint8 ``(3, H, W)``, one rule for training,
evaluation and ``predict`` (``viz.read_image`` calls :func:`read_rgb`).

What the conversion does with each kind of file (``assigndet data check`` reports the same words):

* RGB: unchanged. Grayscale (``L``, ``1``): the gray value in all three channels.
* With transparency (``RGBA``, ``LA``, ``PA``, a palette with a transparent colour):
  composited on white, ``out = (rgb * a + 255 * (255 - a)) / 255`` rounded, so transparent
  pixels become white (not the black the bare RGB values often hold).
* 16-bit grayscale (``I;16*``, ``I``): scaled to 8 bits, ``round(v / 257)`` (0..65535 -> 0..255),
  instead of Pillow's clipping at 255 that would make most of the image white.
* CMYK, YCbCr, LAB, HSV, palette without transparency: Pillow's conversion to RGB.
* The EXIF orientation tag is ignored: pixels are used as stored, as the COCO loaders of the
  original repositories do, so boxes must be given in stored-pixel coordinates.

Truncated files are errors (Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off).
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import DatasetError

#: what Pillow raises on missing, unreadable, corrupt or truncated files
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: EXIF tag of the orientation
EXIF_ORIENTATION = 0x0112


def has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)


def conversion(im: Image.Image) -> tuple[str, str]:
    """``(kind, what happens)`` of :func:`to_rgb_array` on ``im``'s mode; ``("", "")`` for RGB."""
    if im.mode == "RGB":
        return "", ""
    if has_alpha(im):
        return "transparency", f"{im.mode} with transparency: composited on white"
    if im.mode in ("L", "1"):
        return "grayscale", f"grayscale ({im.mode}): gray value copied to R, G and B"
    if im.mode in _SIXTEEN_BIT:
        return "16-bit", f"16-bit ({im.mode}): scaled to 8 bits (v / 257)"
    return im.mode, f"{im.mode}: converted to RGB by Pillow"


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint32)  # (H, W, 3)
    a = rgba[..., 3:].astype(np.uint32)  # (H, W, 1)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """``im`` (any Pillow mode) -> uint8 ``(H, W, 3)`` by the rules of the module docstring."""
    if im.mode == "RGB":
        return np.asarray(im)
    if has_alpha(im):
        return _composite_on_white(np.asarray(im.convert("RGBA")))
    if im.mode in _SIXTEEN_BIT:
        v = np.asarray(im).astype(np.float64)  # (H, W)
        gray = np.clip(np.rint(v / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def unreadable_reason(e: BaseException) -> str:
    """A short reason for one of :data:`DECODE_ERRORS` (without the path, which the caller names)."""
    if isinstance(e, UnidentifiedImageError):
        return "cannot identify image file (not a format Pillow reads)"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def open_rgb(path: str | os.PathLike, inspect: Callable[[Image.Image], None] | None = None) -> np.ndarray:
    """The decoded image at ``path`` as uint8 ``(H, W, 3)``; raises one of :data:`DECODE_ERRORS`.
    ``inspect`` sees the opened (not yet converted) Pillow image (``data check`` reads its mode)."""
    with Image.open(path) as im:
        im.load()  # decodes everything: a truncated or corrupt file raises here
        if inspect is not None:
            inspect(im)
        return np.array(to_rgb_array(im), order="C")  # a writable copy


def read_rgb(path: str | os.PathLike) -> Tensor:
    """The image at ``path`` as RGB uint8 ``(3, H, W)`` (transparency on white, 16-bit scaled,
    EXIF orientation ignored); an unreadable file is a :class:`DatasetError` naming it."""
    try:
        arr = open_rgb(path)
    except DECODE_ERRORS as e:
        raise DatasetError(f"cannot read image {path}: {unreadable_reason(e)}") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W)


__all__ = ["read_rgb", "open_rgb", "to_rgb_array", "conversion", "has_alpha", "unreadable_reason",
           "DECODE_ERRORS", "EXIF_ORIENTATION"]
