"""The decoding stage of the image pipeline: from an encoded file to the 8-bit pixels of the network's input.

He et al.'s augmentation, as the paper trains (Section 3.4), takes a random box of 8-100 % of the image's area
with aspect ratio 3/4-4/3, resizes it to ``r x r`` and mirrors it half the time; validation takes the centre
box that becomes the centre ``r x r`` square once the short side is resized to ``r * 256 / 224`` (resizing that
box alone samples the very points resize-then-crop samples: :func:`centre_plan`). Either way
the box depends only on the image's *size*, which a file's header gives: so a :class:`Plan` (box and flip) is
drawn before anything is decoded (the draw: :func:`random_resized_crop`, torchvision's ``RandomResizedCrop``
procedure, from a generator seeded by (seed, epoch, index)), and the decoder only has to produce that box at
``r x r``. Two decoders carry a plan out:

* :func:`decode_box` (CPU, Pillow with libjpeg-turbo): a JPEG is decoded at the largest DCT scale (1/2, 1/4,
  1/8: libjpeg's scaled inverse DCT, Pillow's ``draft``) that keeps the box at least ``r`` pixels on each side,
  and the box is resized to ``r x r`` straight from it (Pillow's resize with a box: antialiased, on 8-bit
  pixels, no intermediate image). Other formats are decoded at full size. It runs in the DataLoader workers.
* :class:`DeviceDecoder` (nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``): a batch of JPEGs is
  decoded on the GPU, each box cut out and resized there (antialiased bilinear). Files it cannot take
  (not a JPEG, CMYK) are decoded by the workers with :func:`decode_box`, and a file the device refuses is
  decoded by :func:`decode_box` in the main process. On a CPU device it runs the same code with libjpeg-turbo:
  the fallback the tests exercise.

The two give the same boxes but not the same bits (scaled IDCT and Pillow's resampler against a full decode
and PyTorch's): a run decodes with one of them from start to end, or its images change by a level or two.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CROP_SCALE = (0.08, 1.0)
"""Area fraction of the random box (He et al. 2015; paper Section 3.4)."""
CROP_RATIO = (3 / 4, 4 / 3)
"""Aspect ratio (width / height) of the random box."""
CROP_TRIES = 10
"""Draws before the fallback to the centred box of the clamped aspect (torchvision's number)."""
DCT_SCALES = (8, 4, 2, 1)
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}
ALPHA_BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited onto white, as an image viewer shows them."""


@dataclass(frozen=True)
class Plan:
    """Which box of an image (in its pixels; fractional for validation) becomes the ``size x size`` output, and
    whether it is mirrored left-right."""

    left: float
    top: float
    width: float
    height: float
    flip: bool = False


def sample_generator(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of one image's random choices: a function of (seed, epoch, index) alone, never of the
    batch, the worker or the process the image is prepared in (docs/training.md, "Reproducibility"). Python's
    Mersenne Twister seeded with the three numbers as one integer; only its ``random()`` is used, whose
    sequence for a seed Python keeps from version to version (and which is 5x cheaper to set up than numpy's)."""
    if not 0 <= epoch < 2**32 or not 0 <= index < 2**32 or seed < 0:
        raise ValueError(f"seed, epoch and index must be >= 0 (epoch, index < 2**32), got {seed}, {epoch}, {index}")
    return random.Random((seed << 64) | (epoch << 32) | index)


def random_resized_crop(width: int, height: int, rng: random.Random, scale: tuple[float, float] = CROP_SCALE,
                        ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a box with area ``U(scale) x`` the image's and aspect ``exp(U(log ratio))``,
    placed uniformly; after :data:`CROP_TRIES` boxes that do not fit, the largest centred box whose aspect is
    ``ratio`` clamped. The procedure of torchvision's ``RandomResizedCrop.get_params``, so the boxes follow
    the same distribution (``tests/test_pipeline.py`` compares them)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * rng.random())
        aspect = math.exp(log_lo + (log_hi - log_lo) * rng.random())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.random() * (width - w + 1)), int(rng.random() * (height - h + 1)), w, h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_plan(width: int, height: int, seed: int, epoch: int, index: int) -> Plan:
    """The training plan of image ``index`` in ``epoch``: a random-resized-crop box and a coin flip."""
    rng = sample_generator(seed, epoch, index)
    box = random_resized_crop(width, height, rng)
    return Plan(*box, flip=rng.random() < 0.5)


def shift_plan(width: int, height: int, translate: int, seed: int, epoch: int, index: int) -> Plan:
    """The small-image training plan (``augment="shift"``): the whole image shifted by up to ``translate`` pixels
    in each direction, what it uncovers black, and a coin flip -- the augmentation of the in-memory sets
    (:class:`~peffnet.data.datasets.TensorImageDataset`) for images written as files."""
    rng = sample_generator(seed, epoch, index)
    span = 2 * translate + 1
    dx, dy = int(rng.random() * span) - translate, int(rng.random() * span) - translate
    return Plan(dx, dy, width, height, flip=rng.random() < 0.5)


def centre_plan(width: int, height: int, resolution: int, resize: int) -> Plan:
    """The validation plan: the box of the image that becomes the centre ``resolution`` square once the short side
    is resized to ``resize`` -- torchvision's ``Resize(resize)`` and ``CenterCrop(resolution)`` mapped back to the
    image, so that resizing this box alone samples the very same points."""
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    left, top = int(round((new_w - resolution) / 2.0)), int(round((new_h - resolution) / 2.0))
    sx, sy = width / new_w, height / new_h
    return Plan(left * sx, top * sy, resolution * sx, resolution * sy)


# --------------------------------------------------------------------------- CPU: Pillow, libjpeg-turbo


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: alpha composited onto white, 16-bit and float scaled, CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I"):  # 16-bit samples (PNG/TIFF load as I;16 or I): 0..65535 -> 0..255
            values = values / 257.0
        elif values.max(initial=0.0) <= 1.0:  # float images are usually 0..1
            values = values * 255.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def dct_scale(plan: Plan, size: int) -> int:
    """The largest JPEG DCT scaling denominator (8, 4, 2 or 1) that keeps the plan's box at least ``size``
    pixels on both sides (so the box is never enlarged because of the scale)."""
    limit = min(plan.width, plan.height) / size
    return next((s for s in DCT_SCALES if s <= limit), 1)


def decode_box(image: Image.Image, plan: Plan, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """The plan's box of an opened (not yet loaded) image as ``(3, size, size)`` 8-bit RGB, mirrored if the
    plan says so. A JPEG is decoded at the DCT scale :func:`dct_scale` allows; every mode becomes RGB
    (:func:`to_rgb`). Decoding errors (truncated or corrupt data) propagate."""
    scale = 1.0
    if image.format == "JPEG" and (s := dct_scale(plan, size)) > 1:
        width = image.width
        drafted = image.draft(None, (width // s, image.height // s))
        if drafted is not None:  # (mode, (0, 0, width / scale, height / scale)): the box shrinks by that scale
            scale = width / drafted[1][2]
    image.load()
    rgb = to_rgb(image)
    box = (plan.left / scale, plan.top / scale, (plan.left + plan.width) / scale, (plan.top + plan.height) / scale)
    if box[0] < 0 or box[1] < 0 or box[2] > rgb.width or box[3] > rgb.height:  # a shift plan: black around
        x0, y0 = math.floor(min(box[0], 0)), math.floor(min(box[1], 0))
        canvas = Image.new("RGB", (math.ceil(max(box[2], rgb.width)) - x0, math.ceil(max(box[3], rgb.height)) - y0))
        canvas.paste(rgb, (-x0, -y0))
        rgb, box = canvas, (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
    out = rgb.resize((size, size), RESAMPLE[interpolation], box=box)
    if plan.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    planes = b"".join(band.tobytes() for band in out.split())  # channels first, as the network takes them
    return torch.frombuffer(bytearray(planes), dtype=torch.uint8).view(3, size, size)


class OversizedImage(ValueError):
    """An image file whose header announces more pixels than the limit: skipped without being decoded."""


DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What reading a bad file raises: truncated or corrupt data, not an image, an unsupported mode."""


def open_image(file: str | IO[bytes], max_pixels: int | None = None) -> Image.Image:
    """Open an image file or file object (reads the header only) and refuse it, before any decoding, when it
    has more than ``max_pixels`` pixels (default: PIL's ``Image.MAX_IMAGE_PIXELS``; PIL itself refuses twice
    its limit) with :class:`OversizedImage`."""
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # PIL warns above its limit; the check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
    except Image.DecompressionBombError as err:
        raise OversizedImage(str(err)) from None
    if limit and image.width * image.height > limit:
        image.close()
        raise OversizedImage(f"{image.width}x{image.height} pixels, more than the limit of {limit}")
    return image


def load_rgb(file: str | IO[bytes], max_pixels: int | None = None) -> Image.Image:
    """Decode a whole file (truncation is an error, not grey pixels) as 8-bit RGB (:func:`to_rgb`); an
    :class:`OversizedImage` error, before decoding, above ``max_pixels``."""
    with open_image(file, max_pixels) as image:
        image.load()
        return to_rgb(image)


def device_decodable(image: Image.Image) -> bool:
    """Whether nvJPEG can decode this opened file: a JPEG in YCbCr or grayscale (not CMYK)."""
    return image.format == "JPEG" and image.mode in ("RGB", "L")


# --------------------------------------------------------------------------- device: nvJPEG


class DeviceDecoder:
    """Decodes batches of JPEG files on ``device`` (nvJPEG on CUDA, libjpeg-turbo on a CPU) and carries out
    their plans there: the box cut out, resized to ``size x size`` (bilinear, antialiased), mirrored."""

    def __init__(self, device: torch.device, interpolation: str = "bilinear") -> None:
        self.device, self.interpolation = device, interpolation

    def __call__(self, files: list[torch.Tensor], plans: list[Plan], size: int) -> list[torch.Tensor | None]:
        """One ``(3, size, size)`` uint8 tensor on the device per file (its bytes as a 1-D uint8 CPU tensor),
        or ``None`` for a file the device could not decode."""
        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():  # torchvision >= 0.29 marks its decoders deprecated (for torchcodec)
            warnings.simplefilter("ignore")
            try:
                images: list[torch.Tensor | None] = list(decode_jpeg(files, mode=ImageReadMode.RGB,
                                                                     device=self.device))
            except RuntimeError:  # one bad file fails the batch: decode them one by one
                images = []
                for data in files:
                    try:
                        images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError:
                        images.append(None)
        return [None if image is None else self.resize(image, plan, size) for image, plan in zip(images, plans,
                                                                                                  strict=True)]

    def resize(self, image: torch.Tensor, plan: Plan, size: int) -> torch.Tensor:
        """The plan carried out on a decoded (3, H, W) uint8 image: (3, size, size) uint8. The whole pixels
        around the box are resized so that the box becomes ``size x size``, then the box is cut out (exact for
        the whole-pixel boxes of training; for validation's fractional ones, to a fraction of a pixel)."""
        x0, y0 = math.floor(plan.left), math.floor(plan.top)
        x1, y1 = math.ceil(plan.left + plan.width), math.ceil(plan.top + plan.height)
        height, width = image.shape[1:]
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:  # a shift plan: black around the image
            image = F.pad(image, (max(0, -x0), max(0, x1 - width), max(0, -y0), max(0, y1 - height)))
            plan = Plan(plan.left - min(x0, 0), plan.top - min(y0, 0), plan.width, plan.height, plan.flip)
            x0, x1, y0, y1 = x0 - min(x0, 0), x1 - min(x0, 0), y0 - min(y0, 0), y1 - min(y0, 0)
        x1, y1 = min(image.shape[2], x1), min(image.shape[1], y1)
        fx, fy = size / plan.width, size / plan.height
        region = image[:, y0:y1, x0:x1][None].float()
        smooth = self.interpolation != "nearest"
        out = F.interpolate(region, size=(max(size, round((y1 - y0) * fy)), max(size, round((x1 - x0) * fx))),
                            mode=self.interpolation, antialias=smooth, align_corners=False if smooth else None)[0]
        top, left = round((plan.top - y0) * fy), round((plan.left - x0) * fx)
        top, left = min(top, out.shape[1] - size), min(left, out.shape[2] - size)
        out = out[:, top:top + size, left:left + size]
        if plan.flip:
            out = out.flip(-1)
        return out.round_().clamp_(0, 255).to(torch.uint8)
