"""ImageNet-layout image folders (``PATH/train/CLASS/*.jpg``, ``PATH/val/CLASS/*.jpg``) with robust decoding.

The layout is checked when the dataset is built (missing or empty folders are one-line errors). Images
are decoded lazily in DataLoader workers; every file becomes 8-bit RGB whatever its mode (grayscale,
palette, CMYK, 16-bit, with alpha, ...). A file that cannot be decoded (corrupt, truncated, not an image
at all) does not stop the epoch: it is *skipped* -- its slot in the batch takes the next readable image
of the dataset, so every batch keeps its size -- and its path is reported back through the batch.

Preprocessing follows He et al. (2015) as the paper does (Section 3.4): training takes a random-size
crop (8-100 % of the area, aspect 3/4-4/3) resized to ``r`` and a random horizontal flip; validation
resizes the short side to ``r * 256 / 224`` and centre-crops ``r``. The random choices of an image depend
only on (seed, epoch, index) (see :mod:`peffnet.data`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from peffnet.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_CONSECUTIVE_FAILURES = 32
ALPHA_BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited onto white, as an image viewer shows them."""


def class_folders(root: Path, split: str) -> list[Path]:
    """The class folders of ``root/split``, sorted; one-line errors for a missing or empty layout."""
    if not root.is_dir():
        raise ConfigError(f"data directory {root} does not exist")
    split_dir = root / split
    if not split_dir.is_dir():
        raise ConfigError(f"{root} has no {split}/ folder (expected {split}/CLASS/*.jpg)")
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"{split_dir} has no class folders (expected {split}/CLASS/*.jpg)")
    return classes


def list_images(folder: Path) -> list[Path]:
    """Image files (by extension) anywhere under ``folder``, sorted; an error when there are none."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ConfigError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS[:3])}, ...)")
    return files


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


def load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` fully (truncation is an error, not grey pixels) and convert it to 8-bit RGB."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def build_transform(resolution: int, train: bool) -> v2.Compose:
    """He et al. (2015) training crop + flip, or resize-to-r*256/224 + centre-crop for validation."""
    if train:
        geometry = [v2.RandomResizedCrop(resolution, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(int(resolution * 256 / 224), antialias=True), v2.CenterCrop(resolution)]
    return v2.Compose([v2.PILToTensor(), *geometry, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageFolderDataset(Dataset):
    """One split of an ImageNet-layout folder. Class indices follow the sorted class names of ``train/``
    (or of ``val/`` when there is no ``train/``), so both splits agree."""

    in_chans = 3

    def __init__(self, root: Path, split: str, resolution: int, train_transform: bool) -> None:
        train_classes = [p.name for p in class_folders(root, "train")] if (root / "train").is_dir() else None
        folders = class_folders(root, split)
        self.classes = train_classes or [p.name for p in folders]
        unknown = [p.name for p in folders if p.name not in self.classes]
        if unknown:
            raise ConfigError(f"{root / split} has class folder {unknown[0]!r} that train/ does not have")
        self.num_classes = len(self.classes)
        index = {name: i for i, name in enumerate(self.classes)}
        self.samples = [(str(f), index[p.name]) for p in folders for f in list_images(p)]
        self.root, self.split = root, split
        self.transform = build_transform(resolution, train_transform)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, int, list[str]]:
        """``key`` is an index, or (index, epoch, seed) for a reproducible random augmentation.

        Returns (image tensor, label, paths of unreadable files skipped to get it).
        """
        index, epoch, seed = key if isinstance(key, tuple) else (key, 0, 0)
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = load_rgb(Path(path))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                continue
            torch.manual_seed(((seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63)
            # only this index's own file is reported: a failing substitute is reported when its turn comes
            return self.transform(image), label, [self.samples[index][0]] if attempt else []
        raise ConfigError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images in {self.root / self.split}, "
                          f"starting at {self.samples[index][0]}; is the dataset corrupt?")


def collate(batch: list[tuple[torch.Tensor, int, list[str]]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack images and labels; concatenate the skipped paths."""
    images, labels, skipped = zip(*batch, strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), [p for s in skipped for p in s]
