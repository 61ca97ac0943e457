"""Image transforms for the streaming (large-image) path, written with Pillow and torch.

torchvision is not a dependency, so the two standard ImageNet pipelines are implemented
here: the training crop of Szegedy et al. (RandomResizedCrop + horizontal flip) and the
evaluation crop (resize the shorter side to ``size * 256 / 224``, then a centre crop).

Every random choice draws from a ``torch.Generator`` passed by the caller (or torch's
global generator when ``None``), so results are reproducible from a seed.  Transforms take
a PIL image that may still be *unloaded* (just opened): knowing the output size before
decoding lets JPEG decoding use ``Image.draft``, which decodes at 1/2, 1/4 or 1/8 scale in
the DCT domain and makes full-size ImageNet photos several times cheaper to read.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from PIL import Image

Transform = Callable[[Image.Image, "torch.Generator | None"], Image.Image]

# ImageNet statistics, the conventional normalisation for streamed photo folders whose
# mean we do not compute (that would mean decoding the whole data set once).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(low: int, high_inclusive: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(low, high_inclusive + 1, (), generator=generator).item())


def _draft_for(img: Image.Image, box: tuple[int, int, int, int], out_w: int, out_h: int):
    """Let a not-yet-loaded JPEG decode at reduced scale, keeping >= out size in the box.

    Returns the box rescaled to the (possibly smaller) decoded image.
    """
    w0, h0 = img.size
    left, top, right, bottom = box
    bw, bh = right - left, bottom - top
    # draft() picks the largest DCT scale whose result is still at least the requested
    # size, so asking for the full image scaled by out/box keeps the crop >= out pixels.
    req = (max(1, math.ceil(w0 * out_w / bw)), max(1, math.ceil(h0 * out_h / bh)))
    if img.format == "JPEG" and req[0] < w0 and req[1] < h0:
        img.draft("RGB", req)
    w1, h1 = img.size
    if (w1, h1) == (w0, h0):
        return box
    sx, sy = w1 / w0, h1 / h0
    return (left * sx, top * sy, right * sx, bottom * sy)


class RandomResizedCrop:
    """Crop a random area/aspect-ratio region and resize it to ``size`` x ``size``.

    Same sampling as the classic Inception/ResNet training recipe: area fraction uniform
    in ``scale``, log-aspect-ratio uniform in ``log(ratio)``, ten tries, then a centre crop
    with the aspect ratio clamped into ``ratio``.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.size = int(size)
        self.scale = scale
        self.ratio = ratio

    def params(self, width: int, height: int, generator: torch.Generator | None = None):
        """Return the crop box ``(left, top, right, bottom)`` for an image of this size."""
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * _uniform(self.scale[0], self.scale[1], generator)
            aspect = math.exp(_uniform(log_lo, log_hi, generator))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = _randint(0, height - h, generator)
                left = _randint(0, width - w, generator)
                return (left, top, left + w, top + h)
        # Fallback: the largest centre crop whose aspect ratio lies inside `ratio`.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        return (left, top, left + w, top + h)

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        box = self.params(*img.size, generator=generator)
        box = _draft_for(img, box, self.size, self.size)
        return _rgb(img).resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        if torch.rand((), generator=generator).item() < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


class ResizeCenterCrop:
    """Resize the shorter side to ``resize`` (default ``size*256/224``), centre-crop ``size``."""

    def __init__(self, size: int, resize: int | None = None) -> None:
        self.size = int(size)
        self.resize = int(resize) if resize else int(round(self.size * 256 / 224))

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        w, h = img.size
        scale = self.resize / min(w, h)
        new_w, new_h = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        # Map the centre crop back to source coordinates so that a single resize with a
        # box does both steps (and so that draft() can decode the JPEG at reduced scale).
        crop_w, crop_h = self.size * w / new_w, self.size * h / new_h
        left, top = (w - crop_w) / 2, (h - crop_h) / 2
        box = _draft_for(img, (left, top, left + crop_w, top + crop_h), self.size, self.size)
        return _rgb(img).resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)


class Compose:
    """Apply transforms in order, handing each the same generator."""

    def __init__(self, *transforms: Transform) -> None:
        self.transforms = transforms

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        for t in self.transforms:
            img = t(img, generator)
        return img


def train_transform(size: int) -> Compose:
    """The standard ImageNet training augmentation producing ``size`` x ``size`` RGB."""
    return Compose(RandomResizedCrop(size), RandomHorizontalFlip())


def eval_transform(size: int) -> Compose:
    """The standard ImageNet evaluation crop producing ``size`` x ``size`` RGB."""
    return Compose(ResizeCenterCrop(size))


def _rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB (palette images via RGBA so transparency is honoured)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Return ``img`` as an RGB image (grayscale, palette, RGBA, CMYK... are converted)."""
    return _rgb(img)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """Return an RGB PIL image as a contiguous uint8 tensor of shape 3 x H x W."""
    arr = np.asarray(_rgb(img), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
