"""The validation preprocessing of a dataset as one description, :class:`Preprocessing`: what evaluation does
to an image before the network sees it. The datasets build their validation transform from it, a checkpoint
records it (``preprocessing``, docs/formats.md), an exported model carries it, and ``peffnet predict``
applies it to image files, so a file predicted goes through exactly the steps its dataset's images go through
in evaluation.

Two pipelines, both following He et al. (2015) as the paper does (Section 3.4):

* **image folders**: the file as 8-bit RGB, the short side resized to ``resize = int(r * 256 / 224)``
  (antialiased, on the 8-bit image), the centre ``r x r`` cropped, scaled to [0, 1], normalized with
  ImageNet's mean and std. Done in one step, as the datasets do it (:mod:`peffnet.data.decode`): the centre
  box that becomes that square is resized to ``r x r`` (a JPEG decoded at the largest DCT scale that keeps
  the box at least ``r`` pixels wide);
* **in-memory sets** (Fashion-MNIST, synthetic): the ``image_size`` px image (28, 32) centred on a black
  canvas of ``image_size + 2 * pad`` px (32), scaled to [0, 1], the canvas resized to ``r x r`` (antialiased)
  when it is not that size already, normalized with the training set's mean and std. Fashion-MNIST is
  grayscale (``channels == 1``). A file of another size is first fitted to ``image_size`` (short side
  resized, centre cropped), which the dataset's own images never need.

Any PIL mode is converted as the image folders convert it (:func:`to_rgb`: alpha composited onto white,
16-bit and float images scaled, palette and CMYK converted), then to grayscale for one channel.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from peffnet.data.decode import centre_plan, decode_box, to_rgb
from peffnet.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 224 / 256
"""The validation crop of image folders: resize the short side to ``r / CROP_PCT`` (= ``r * 256 / 224``)."""
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``1 / (255 std)`` and ``mean / std`` as (C, 1, 1) tensors on ``device``, made once (on a GPU, making them
    is a copy from the host that would wait for the work queued before it)."""
    scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(-1, 1, 1)
    return scale, torch.tensor([m / s for m, s in zip(mean, std, strict=True)], device=device).view(-1, 1, 1)


def _number_list(name: str, value: Any, channels: int) -> tuple[float, ...]:
    if (not isinstance(value, (list, tuple)) or len(value) != channels
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise ConfigError(f"preprocessing {name} must be {channels} number(s), got {value!r}")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class Preprocessing:
    """What evaluation does to an image (see the module doc); JSON-safe through :meth:`to_dict`."""

    resolution: int  # side of the network's input (pixels)
    resize: int  # the short side is resized to this, then the centre resolution x resolution is cropped
    mean: tuple[float, ...]  # per channel, on values scaled to [0, 1]
    std: tuple[float, ...]
    interpolation: str = "bilinear"  # of every resize (antialiased)
    channels: int = 3  # 3: RGB; 1: grayscale (PIL "L" of the RGB image)
    image_size: int | None = None  # in-memory sets: the side of their images; None for image folders
    pad: int = 0  # in-memory sets: black border around the image (canvas = image_size + 2 * pad)

    @classmethod
    def image_folder(cls, resolution: int) -> Preprocessing:
        """Image folders: resize the short side to ``int(r * 256 / 224)``, centre crop ``r``, ImageNet mean/std."""
        return cls(resolution, int(resolution * 256 / 224), IMAGENET_MEAN, IMAGENET_STD)  # = r / CROP_PCT

    @classmethod
    def canvas(cls, resolution: int, image_size: int, pad: int, mean: tuple[float, ...], std: tuple[float, ...]
               ) -> Preprocessing:
        """In-memory sets: the image on its black canvas, the canvas resized to ``r``; one mean/std per channel."""
        return cls(resolution, resolution, tuple(mean), tuple(std), channels=len(mean), image_size=image_size,
                   pad=pad)

    @classmethod
    def from_pretrained_cfg(cls, cfg: dict[str, Any], resolution: int) -> Preprocessing:
        """The image-folder pipeline a timm ``pretrained_cfg`` describes (``crop_pct``, ``interpolation``,
        ``mean``, ``std``, ``input_size``), at ``resolution``."""
        resize = math.floor(resolution / cfg["crop_pct"])
        return cls.from_dict({"resolution": resolution, "resize": resize, "mean": list(cfg["mean"]),
                              "std": list(cfg["std"]), "interpolation": cfg["interpolation"],
                              "channels": cfg["input_size"][0]})

    @classmethod
    def from_dict(cls, record: Any) -> Preprocessing:
        """The description a checkpoint or an exported model records, validated (one-line errors)."""
        if not isinstance(record, dict):
            raise ConfigError(f"preprocessing must be a mapping, got {type(record).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - fields - {"crop_pct"})
        missing = sorted({"resolution", "resize", "mean", "std"} - set(record))
        if unknown or missing:
            raise ConfigError(f"preprocessing has {'unknown' if unknown else 'no'} "
                              f"{', '.join(unknown or missing)}")
        values = {k: v for k, v in record.items() if k in fields}
        for name in ("resolution", "resize", "channels", "image_size", "pad"):
            value = values.get(name, 0)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"preprocessing {name} must be an integer >= 0, got {value!r}")
        channels = values.get("channels", 3)
        if channels not in (1, 3):
            raise ConfigError(f"preprocessing channels must be 1 or 3, got {channels!r}")
        if values.get("interpolation", "bilinear") not in INTERPOLATIONS:
            raise ConfigError(f"preprocessing interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                              f"got {values['interpolation']!r}")
        values["mean"] = _number_list("mean", values["mean"], channels)
        values["std"] = _number_list("std", values["std"], channels)
        if min(values["std"]) <= 0 or values["resolution"] < 1 or values["resize"] < values["resolution"]:
            raise ConfigError(f"preprocessing is inconsistent: {record!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The record of checkpoints and exported models: the fields, lists for tuples, plus ``crop_pct``
        (resolution / resize, as timm's ``pretrained_cfg``)."""
        record = dataclasses.asdict(self)
        record.update(mean=list(self.mean), std=list(self.std), crop_pct=self.resolution / self.resize)
        return record

    def at(self, resolution: int) -> Preprocessing:
        """The same pipeline for another input side (image folders keep their crop rule)."""
        if self.image_size is not None:
            resize = resolution
        elif self.resize == int(self.resolution * 256 / 224):  # the datasets' rule, exactly
            resize = int(resolution * 256 / 224)
        else:
            resize = math.floor(resolution * self.resize / self.resolution)
        return dataclasses.replace(self, resolution=resolution, resize=resize)

    def describe(self) -> str:
        """One line: ``64 px (resize 73, centre crop 64, bilinear), RGB, mean 0.485,0.456,0.406, std ...``."""
        values = ",".join(f"{v:.4g}" for v in self.mean), ",".join(f"{v:.4g}" for v in self.std)
        canvas = None if self.image_size is None else self.image_size + 2 * self.pad
        steps = (f"resize {self.resize}, centre crop {self.resolution}" if canvas is None else
                 f"{self.image_size} px image on a {canvas} px canvas" + ", resized" * (canvas != self.resolution))
        return (f"{self.resolution} px ({steps}, {self.interpolation}), {'RGB' if self.channels == 3 else 'grayscale'}"
                f", mean {values[0]}, std {values[1]}")

    # ------------------------------------------------------------------ applying it

    @property
    def _mode(self) -> InterpolationMode:
        return InterpolationMode(self.interpolation)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel, in place, of float images (..., C, H, W)."""
        if len(set(self.mean)) == 1 and len(set(self.std)) == 1:  # one value for every channel
            return x.sub_(self.mean[0]).div_(self.std[0])
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x.sub_(mean).div_(torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1))

    def finish_canvas(self, canvas: torch.Tensor) -> torch.Tensor:
        """In-memory sets: 8-bit canvases (N, C, s, s) scaled to [0, 1], resized to the resolution, normalized
        (the common end of the training and the validation pipeline)."""
        x = canvas.float().div_(255.0)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            smooth = self.interpolation != "nearest"
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode=self.interpolation, antialias=smooth,
                              align_corners=False if smooth else None)
        return self.normalize(x)

    def finish_image(self, pixels: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Image folders: 8-bit images (..., C, r, r) as the network's input, scaled to [0, 1] and normalized in
        one multiply-subtract, ``x * (1 / (255 std)) - mean / std`` (into ``out`` when given)."""
        scale, shift = _affine(self.mean, self.std, pixels.device)
        out = torch.empty(pixels.shape, device=pixels.device) if out is None else out
        return out.copy_(pixels).mul_(scale).sub_(shift)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """In-memory sets: the validation pipeline of 8-bit images (N, C, image_size, image_size)."""
        if self.pad:
            images = F.pad(images, (self.pad,) * 4)
        return self.finish_canvas(images)

    def tensor_transform(self) -> v2.Compose:
        """Image folders: the validation pipeline of an 8-bit RGB PIL image (PIL -> float tensor)."""
        return v2.Compose([v2.PILToTensor(), v2.Resize(self.resize, interpolation=self._mode, antialias=True),
                           v2.CenterCrop(self.resolution), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(self.mean, self.std)])

    def convert(self, image: Image.Image) -> Image.Image:
        """Any PIL image as the datasets read it: 8-bit RGB (:func:`to_rgb`), or grayscale for one channel."""
        rgb = to_rgb(image)
        return rgb if self.channels == 3 else rgb.convert("L")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """The network's input (C, r, r) for a PIL image of any mode and size; an image opened but not yet loaded
        (``PIL.Image.open``) is decoded here as the datasets decode it (a JPEG at a reduced DCT scale)."""
        if self.image_size is None and self.channels == 3:
            plan = centre_plan(image.width, image.height, self.resolution, self.resize)
            return self.finish_image(decode_box(image, plan, self.resolution, self.interpolation))
        image = self.convert(image)
        if self.image_size is None:
            return self.tensor_transform()(image)
        pixels = v2.functional.pil_to_tensor(image)
        if tuple(pixels.shape[-2:]) != (self.image_size, self.image_size):
            pixels = v2.functional.center_crop(v2.functional.resize(
                pixels, [self.image_size], interpolation=self._mode, antialias=True), [self.image_size] * 2)
        return self.batch(pixels[None])[0]
