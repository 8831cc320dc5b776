"""Photo-like JPEG folders for measuring and testing the image pipeline (``scripts/make_imagenet_like.py``,
``peffnet data bench --make``; docs/data.md).

``OUT/train/CLASSNNN/NNNNN.jpg`` and ``OUT/val/...`` at ImageNet's file statistics (long side 400-640 px,
short/long 0.6-1, JPEG quality 90 with 4:2:0 chroma, ~100 KB): a sky-to-ground gradient, a luminance texture
with a 1/f^beta power spectrum (natural images have beta near 2), low-frequency colour variation, one to three
shaded, textured objects with soft edges, and sensor-like grain. What identifies a class: its palette, the shape
of its objects, the slope and orientation of its texture -- learnable, not trivial (colours and sizes are
jittered per image, the objects are placed at random and a random crop may miss them). Deterministic: the same
seed gives the same bytes (one numpy generator per file).
"""

from __future__ import annotations

import colorsys
import io
import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("ellipse", "rectangle", "triangle", "star", "ring", "hexagon")
SPLITS = {"train": 0, "val": 1}
GRAIN_STD = 5.0
"""Standard deviation of the grain, in 8-bit levels."""


def class_style(seed: int, label: int) -> dict:
    """What class ``label`` looks like: palette (HSV), object shape, texture slope and orientation."""
    rng = np.random.default_rng([seed, 7919, label])
    hue = (label * 0.618034 + rng.uniform(0, 0.1)) % 1.0  # golden-ratio hues: distinct palettes
    return {"sky": (hue, rng.uniform(0.15, 0.5), rng.uniform(0.7, 0.95)),
            "ground": ((hue + rng.uniform(0.2, 0.5)) % 1, rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.6)),
            "object": ((hue + 0.5) % 1, rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.9)),
            "shape": SHAPES[label % len(SHAPES)], "objects": 1 + (label // len(SHAPES)) % 3,
            "beta": rng.uniform(1.6, 2.6), "theta": rng.uniform(0, math.pi), "anisotropy": rng.uniform(1.0, 3.0)}


def rgb(hsv: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """An HSV colour, jittered, as float RGB in [0, 1]."""
    h, s, v = hsv
    h = (h + rng.normal(0, 0.03)) % 1
    s, v = np.clip(s + rng.normal(0, 0.08), 0, 1), np.clip(v + rng.normal(0, 0.08), 0.05, 1)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def power_law_noise(height: int, width: int, beta: float, theta: float, anisotropy: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std noise whose power spectrum falls as 1/f^beta, stretched along ``theta``."""
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    u, v = fx * math.cos(theta) + fy * math.sin(theta), -fx * math.sin(theta) + fy * math.cos(theta)
    f = np.sqrt(u * u * anisotropy + v * v / anisotropy)
    f[0, 0] = 1.0
    amplitude = f ** (-beta / 2)
    amplitude[0, 0] = 0.0
    spectrum = amplitude * (rng.standard_normal(f.shape, np.float32) + 1j * rng.standard_normal(f.shape, np.float32))
    field = np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32)
    return field / (field.std() + 1e-8)


def shape_mask(size: tuple[int, int], shape: str, rng: np.random.Generator
               ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A soft-edged mask (float, 0-1, shape (h, w, 1)) of one object of ``shape`` at a random place, size and
    rotation, and the box ``(left, top, right, bottom)`` of the image it covers."""
    width, height = size
    r = rng.uniform(0.12, 0.3) * min(size)
    stretch = rng.uniform(0.7, 1.4)
    blur = rng.uniform(0.8, 2.5)
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.2, 0.85) * height
    turn = rng.uniform(0, 2 * math.pi)
    reach = r * max(stretch, 1.0) + 3 * blur + 2
    box = (max(0, int(cx - reach)), max(0, int(cy - reach)), min(width, int(cx + reach) + 1),
           min(height, int(cy + reach) + 1))
    cx, cy = cx - box[0], cy - box[1]  # drawn in the box's coordinates
    mask = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
    draw = ImageDraw.Draw(mask)

    def polygon(points: int, inner: float = 1.0) -> list[tuple[float, float]]:
        out = []
        for k in range(points * (2 if inner != 1.0 else 1)):
            radius = r if k % 2 == 0 or inner == 1.0 else r * inner
            a = turn + k * math.pi / (points if inner != 1.0 else points / 2)
            out.append((cx + radius * math.cos(a) * stretch, cy + radius * math.sin(a)))
        return out

    if shape == "ellipse":
        draw.ellipse((cx - r * stretch, cy - r, cx + r * stretch, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        draw.ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=0)
    elif shape == "rectangle":
        draw.polygon(polygon(4), fill=255)
    elif shape == "triangle":
        draw.polygon(polygon(3), fill=255)
    elif shape == "hexagon":
        draw.polygon(polygon(6), fill=255)
    else:  # star
        draw.polygon(polygon(5, inner=0.45), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(mask, np.float32)[..., None] * np.float32(1 / 255), box


def make_image(seed: int, split: str, label: int, index: int) -> bytes:
    """One JPEG (quality 90) of class ``label``; the same arguments give the same bytes."""
    rng = np.random.default_rng([seed, SPLITS[split], label, index])
    style = class_style(seed, label)
    long_side = int(rng.integers(400, 641))
    short_side = int(long_side * rng.uniform(0.6, 1.0))
    width, height = (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)
    # background: sky to ground, the horizon at a random height, with low-frequency colour variation
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    horizon = rng.uniform(0.3, 0.7)
    blend = 1 / (1 + np.exp(-(rows - horizon) * rng.uniform(8, 30)))
    image = rgb(style["sky"], rng) * (1 - blend) + rgb(style["ground"], rng) * blend
    tint = Image.fromarray((rng.uniform(0, 255, (4, 4, 3))).astype(np.uint8)).resize((width, height),
                                                                                      Image.Resampling.BICUBIC)
    image = image * (0.85 + 0.3 * np.asarray(tint, np.float32) / 255)
    # the class's texture modulates the luminance
    texture = power_law_noise(height, width, style["beta"], style["theta"], style["anisotropy"], rng)
    image = image * (1 + 0.25 * texture[..., None])
    # objects: shaded, with their own (rolled) texture
    shade = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(1.0, 1.3), width, dtype=np.float32)[None, :, None]
    own = np.roll(texture, (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1))[..., None]
    for _ in range(style["objects"] + int(rng.integers(0, 2))):
        mask, (x0, y0, x1, y1) = shape_mask((width, height), style["shape"], rng)
        body = rgb(style["object"], rng) * shade[:, x0:x1] * (1 + 0.3 * own[y0:y1, x0:x1])
        region = image[y0:y1, x0:x1]
        region += (body - region) * mask
    image *= 255
    grain = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)  # uniform: cheaper than normal
    image += (grain.astype(np.float32) - 127.5) * np.float32(GRAIN_STD * math.sqrt(12) / 256)  # sensor grain
    out = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_one(job: tuple[int, str, int, int, str]) -> int:
    """Write one image (seed, split, label, index, path); its size in bytes."""
    seed, split, label, index, path = job
    data = make_image(seed, split, label, index)
    Path(path).write_bytes(data)
    return len(data)


def write_photo_folder(out: Path, classes: int = 10, train: int = 200, val: int = 50, seed: int = 0,
                       workers: int = 1) -> dict:
    """Write ``classes`` x (``train`` + ``val``) images into ``out``; returns ``images``, ``mean_bytes``,
    ``seconds``."""
    jobs = []
    for split, count in (("train", train), ("val", val)):
        for label in range(classes):
            folder = out / split / f"class{label:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [(seed, split, label, i, str(folder / f"{i:05d}.jpg")) for i in range(count)]
    start = time.perf_counter()
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            sizes = pool.map(write_one, jobs, chunksize=16)
    else:
        sizes = [write_one(job) for job in jobs]
    return {"images": len(sizes), "mean_bytes": float(np.mean(sizes)), "seconds": time.perf_counter() - start}
