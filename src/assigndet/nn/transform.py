"""Resize (the original's rule), normalise and pad a list of images into a batch (SPEC §1.2).

Distributed training: the training short side of an image comes from its target
(``target["min_size"]``, drawn by the data sampler from the seed and the iteration) when the
target carries one, and in training mode under an initialised process group every process pads
its batch to the largest height and width over all processes (an all-reduce MAX), so that N
processes feed the network exactly the tensors one process would, padding included (padding
enters the convolutions and the BatchNorm statistics).
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as tnf
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from ..variants import ResizeRule


def resize_size(height: int, width: int, min_size: int, max_size: int,
                rule: ResizeRule | str = ResizeRule.mrcnn) -> tuple[int, int]:
    """The resized (H, W).

    ``rule="mrcnn"`` (maskrcnn-benchmark): short side ``min_size`` unless the long side would pass
    ``max_size`` (then the short side is ``round(max_size * short / long)``); the long side is
    truncated; a short side already equal to the target keeps the size.
    ``"minimal"`` (PAA_minimal): scale = min(min_size / short, max_size / long), sides
    ``int(scale * side)``. ``"mmdet"`` (mmcv ``rescale_size``): the same scale, sides
    ``int(side * scale + 0.5)``.
    """
    rule = ResizeRule(rule)
    if rule is not ResizeRule.mrcnn:
        scale = min(min_size / min(height, width), max_size / max(height, width)) if max_size > 0 \
            else min_size / min(height, width)
        half = 0.5 if rule is ResizeRule.mmdet else 0.0
        return int(height * scale + half), int(width * scale + half)
    size = min_size
    short, long = min(width, height), max(width, height)
    if max_size > 0 and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def pil_resize_uint8(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a uint8 (3, H, W) tensor with Pillow itself: byte-identical to the
    original's test-time resize (SPEC §8 trap 25)."""
    arr = image.permute(1, 2, 0).contiguous().cpu().numpy()
    out = Image.fromarray(arr).resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).to(image.device)


def cv2_resize_uint8(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a uint8 (3, H, W) tensor with OpenCV itself (``cv2.INTER_LINEAR``), as
    mmcv's ``imrescale`` does in mmdetection's test pipeline: byte-identical to it with the same
    OpenCV build. Needs ``opencv-python-headless`` (the ``assigndet[mmdet]`` extra)."""
    import cv2  # optional dependency: only the *_mmdet presets' exact test-time resize uses it

    arr = image.permute(1, 2, 0).contiguous().cpu().numpy()
    out = cv2.resize(arr, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(out).permute(2, 0, 1).to(image.device)


@functools.lru_cache(maxsize=None)
def opencv_available() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


_warned_no_opencv = False


def _warn_no_opencv() -> None:
    global _warned_no_opencv
    if not _warned_no_opencv:
        _warned_no_opencv = True
        warnings.warn("resize_rule=mmdet: OpenCV is not installed, so test images are resized with torchvision's "
                      "bilinear, which differs from mmdetection's cv2.resize by 1 grey level in ~20% of the pixels; "
                      "pip install 'assigndet[mmdet]' (opencv-python-headless) for byte-identical inputs",
                      stacklevel=3)


def pad_batch(images: list[Tensor], size_divisible: int, extent: tuple[int, int] | None = None) -> Tensor:
    """Images (3, H_i, W_i) -> one zero-padded batch (B, 3, H, W), H and W the largest sides (or
    ``extent``, when given, at least) rounded up to a multiple of ``size_divisible``; each image at
    the top left. One allocation and one copy per image; gradients reach the images (autograd
    records the copies into the batch)."""
    d = size_divisible
    hmax = max(x.shape[1] for x in images)
    wmax = max(x.shape[2] for x in images)
    if extent is not None:
        hmax, wmax = max(hmax, extent[0]), max(wmax, extent[1])
    hmax, wmax = (hmax + d - 1) // d * d, (wmax + d - 1) // d * d
    batch = images[0].new_zeros(len(images), images[0].shape[0], hmax, wmax)  # (B, 3, H, W)
    for i, x in enumerate(images):
        batch[i, :, : x.shape[1], : x.shape[2]].copy_(x)
    return batch


def global_extent(images: list[Tensor]) -> tuple[int, int] | None:
    """The largest (H, W) of ``images`` over all processes of the default group (one all-reduce
    MAX; every process must call it), None outside distributed runs."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1):
        return None
    ext = torch.tensor([max(x.shape[1] for x in images), max(x.shape[2] for x in images)],
                       device=images[0].device)  # (2,)
    torch.distributed.all_reduce(ext, op=torch.distributed.ReduceOp.MAX)
    h, w = ext.tolist()
    return int(h), int(w)


class ImageTransform(nn.Module):
    """Images of any size (uint8 0..255 or float 0..1, RGB) -> a padded normalised batch.

    Returns the batch (B, 3, H, W), the resized sizes (H_i, W_i) and the targets with boxes
    scaled by the per-axis ratio new/old (SPEC §1.2: no +1 correction).

    Training short side: ``target["min_size"]`` when the target has one (the data sampler draws it
    from the seed and the iteration), else ``min_size_train[0]``, or a draw from ``torch``'s RNG in
    ``[lo, hi]`` for a multi-scale range (the Python API without the sampler). In training mode
    under ``torch.distributed`` the batch is padded to the largest size over all processes
    (:func:`global_extent`): every process must then run the forward pass, as DDP training does.
    """

    def __init__(
        self,
        *,
        min_size_train: list[int],
        max_size_train: int,
        min_size_test: int,
        max_size_test: int,
        size_divisible: int = 32,
        to_bgr255: bool = True,
        pixel_mean: list[float],
        pixel_std: list[float],
        exact_test_resize: bool = True,
        resize_rule: ResizeRule | str = ResizeRule.mrcnn,
    ) -> None:
        super().__init__()
        self.resize_rule = ResizeRule(resize_rule)
        if len(min_size_train) not in (1, 2):
            raise ValueError(f"min_size_train must be [S] or [lo, hi], got {min_size_train}")
        self.min_size_train = list(min_size_train)
        self.max_size_train = max_size_train
        self.min_size_test = min_size_test
        self.max_size_test = max_size_test
        self.size_divisible = size_divisible
        self.to_bgr255 = to_bgr255
        self.exact_test_resize = exact_test_resize
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)

    def _target_short_side(self, target: dict | None = None) -> int:
        if not self.training:
            return self.min_size_test
        if target is not None and target.get("min_size") is not None:
            return int(target["min_size"])
        if len(self.min_size_train) == 1:
            return self.min_size_train[0]
        lo, hi = self.min_size_train
        return int(torch.randint(lo, hi + 1, (1,)).item())

    def _resize(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(image.shape[-2:]) == size:
            return image
        exact = image.dtype == torch.uint8 and not self.training and self.exact_test_resize \
            and image.device.type == "cpu"
        if self.resize_rule is ResizeRule.mmdet:  # OpenCV bilinear (half-pixel centres, no antialias)
            if exact:
                if opencv_available():
                    return cv2_resize_uint8(image, size)
                _warn_no_opencv()
            return TF.resize(image, list(size), antialias=False)
        if exact:
            return pil_resize_uint8(image, size)
        return TF.resize(image, list(size), antialias=True)

    def _normalise(self, image: Tensor) -> Tensor:
        """(x [x 255] [RGB -> BGR] - mean) / std in two passes over a float tensor of our own: the
        channel flip on the uint8 image (a quarter of the bytes), one conversion, then in place."""
        if self.to_bgr255:
            image = image.flip(0)  # RGB -> BGR; mean and std are on the 0..255 scale either way
        if image.dtype == torch.uint8:
            x = image.to(self.pixel_mean.dtype)
        else:  # floats 0..1; a new tensor (never the caller's image, which may be a leaf)
            x = image.to(self.pixel_mean.dtype) * 255.0
        return x.sub_(self.pixel_mean).div_(self.pixel_std)

    def prepare(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        """One image (3, H, W) resized to ``size`` (H', W') and normalised -> (3, H', W'), unpadded
        (test-time augmentation builds its runs from it)."""
        return self._normalise(self._resize(image, size))

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        out, sizes, new_targets = [], [], []
        max_size = self.max_size_train if self.training else self.max_size_test
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"image {i}: expected a (3, H, W) tensor, got shape {tuple(img.shape)}")
            h, w = img.shape[-2:]
            short = self._target_short_side(targets[i] if targets is not None else None)
            size = resize_size(h, w, short, max_size, self.resize_rule)
            out.append(self.prepare(img, size))
            sizes.append(size)
            if targets is not None:
                t = dict(targets[i])
                ratio = torch.tensor([size[1] / w, size[0] / h, size[1] / w, size[0] / h], device=img.device)
                t["boxes"] = t["boxes"].to(self.pixel_mean.dtype) * ratio
                new_targets.append(t)
        extent = global_extent(out) if self.training else None
        return pad_batch(out, self.size_divisible, extent), sizes, (new_targets if targets is not None else None)
