"""Image files: the images named on the command line, read as RGB tensors, written back."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..data.image import read_rgb
from ..errors import DatasetError, InputError

#: the files ``assigndet predict DIR`` reads from a directory
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """The image files named by ``inputs``: files as given, directories expanded to their image
    files (sorted); a missing path or an image-less directory is an InputError."""
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


def read_image(path: Path) -> torch.Tensor:
    """RGB uint8 (3, H, W) by the datasets' one rule (:func:`assigndet.data.image.read_rgb`:
    transparency on white, 16-bit scaled, EXIF orientation ignored); an unreadable file is an
    :class:`~assigndet.errors.InputError` naming it."""
    try:
        return read_rgb(path)
    except DatasetError as e:
        raise InputError(str(e)) from None


def to_pil(image: torch.Tensor) -> Image.Image:
    """A uint8 (3, H, W) RGB tensor as a Pillow image."""
    return Image.fromarray(image.permute(1, 2, 0).cpu().numpy())  # (H, W, 3)


def from_pil(image: Image.Image) -> torch.Tensor:
    """A Pillow image as a uint8 (3, H, W) RGB tensor."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def write_image(image: torch.Tensor, path: Path) -> None:
    """Save a uint8 (3, H, W) RGB image (format from the suffix; JPEG at quality 92), creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path, **({"quality": 92} if path.suffix.lower() in (".jpg", ".jpeg") else {}))


__all__ = ["IMAGE_SUFFIXES", "collect_images", "read_image", "to_pil", "from_pil", "write_image"]
