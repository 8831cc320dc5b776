"""ImageNet-layout image folders (``PATH/train/CLASS/*.jpg``, ``PATH/val/CLASS/*.jpg``) with robust decoding.

The layout is checked when the dataset is built: missing or empty folders, and a class none of whose files
decodes, are one-line errors. Images are decoded lazily in DataLoader workers; every file becomes 8-bit RGB
whatever its mode (grayscale, palette, CMYK, 16-bit, with alpha, ...). A file that cannot be decoded
(corrupt, truncated, not an image at all) or whose header announces more pixels than the limit (default:
PIL's ``Image.MAX_IMAGE_PIXELS``; such a file is never decoded) does not stop the epoch: it is *skipped* --
its slot in the batch takes the next readable image of the dataset, so every batch keeps its size -- and
its path is reported back through the batch.

Preprocessing follows He et al. (2015) as the paper does (Section 3.4): training takes a random-size
crop (8-100 % of the area, aspect 3/4-4/3) resized to ``r`` and a random horizontal flip; validation
resizes the short side to ``r * 256 / 224`` and centre-crops ``r`` (:class:`~peffnet.data.preprocessing.Preprocessing`,
which ``peffnet predict`` applies too). The random choices of an image depend only on (seed, epoch, index)
(see :mod:`peffnet.data`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from peffnet.data.preprocessing import Preprocessing, to_rgb
from peffnet.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
MAX_CONSECUTIVE_FAILURES = 32


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


class OversizedImage(ValueError):
    """An image file whose header announces more pixels than the limit: skipped without being decoded."""


def open_image(path: Path, max_pixels: int | None = None) -> Image.Image:
    """Open ``path`` (reads the header only) and refuse it, before any decoding, when it has more than
    ``max_pixels`` pixels (default: PIL's ``Image.MAX_IMAGE_PIXELS``; PIL itself refuses twice its limit)."""
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # PIL warns above its limit; the check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise OversizedImage(str(err)) from None
    if limit and image.width * image.height > limit:
        image.close()
        raise OversizedImage(f"{image.width}x{image.height} pixels, more than the limit of {limit}")
    return image


def load_rgb(path: Path, max_pixels: int | None = None) -> Image.Image:
    """Decode ``path`` fully (truncation is an error, not grey pixels) and convert it to 8-bit RGB; an
    :class:`OversizedImage` error, before decoding, above ``max_pixels``."""
    with open_image(path, max_pixels) as image:
        image.load()
        return to_rgb(image)


DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def check_class_readable(name: str, files: list[Path], max_pixels: int | None) -> None:
    """A one-line error naming class ``name`` when none of its ``files`` decodes (tried in order until one
    does: one decode per healthy class, at reduced size for JPEGs)."""
    first_error = None
    for path in files:
        try:
            with open_image(path, max_pixels) as image:
                image.draft("RGB", (64, 64))
                image.load()
            return
        except DECODE_ERRORS as err:
            first_error = first_error or f"{path.name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    raise ConfigError(f"class {name!r} has no readable image: none of its {len(files)} file(s) in "
                      f"{files[0].parent} decodes (first: {first_error})")


def build_transform(resolution: int, train: bool) -> v2.Compose:
    """He et al. (2015) training crop + flip, or the validation :class:`Preprocessing` (resize to
    ``r * 256 / 224``, centre crop ``r``); both normalized with ImageNet's mean and std."""
    preprocessing = Preprocessing.image_folder(resolution)
    if not train:
        return preprocessing.tensor_transform()
    return v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(resolution, antialias=True), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocessing.mean, preprocessing.std)])


class ImageFolderDataset(Dataset):
    """One split of an ImageNet-layout folder. Class indices follow the sorted class names of ``train/``
    (or of ``val/`` when there is no ``train/``), so both splits agree; ``classes`` are those names and
    ``preprocessing`` the validation :class:`Preprocessing` at this resolution."""

    in_chans = 3

    def __init__(self, root: Path, split: str, resolution: int, train_transform: bool,
                 max_pixels: int | None = None) -> None:
        train_classes = [p.name for p in class_folders(root, "train")] if (root / "train").is_dir() else None
        folders = class_folders(root, split)
        self.classes = train_classes or [p.name for p in folders]
        unknown = [p.name for p in folders if p.name not in self.classes]
        if unknown:
            raise ConfigError(f"{root / split} has class folder {unknown[0]!r} that train/ does not have")
        self.num_classes = len(self.classes)
        index = {name: i for i, name in enumerate(self.classes)}
        self.samples = []
        for p in folders:
            files = list_images(p)
            check_class_readable(p.name, files, max_pixels)
            self.samples += [(str(f), index[p.name]) for f in files]
        self.root, self.split, self.max_pixels = root, split, max_pixels
        self.preprocessing = Preprocessing.image_folder(resolution)
        self.transform = build_transform(resolution, train_transform)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, int, list[str], list[str]]:
        """``key`` is an index, or (index, epoch, seed) for a reproducible random augmentation.

        Returns (image tensor, label, this index's file if it was skipped, the same if it is over the pixel
        limit): only the index's own file is reported; a failing substitute is reported when its turn comes.
        """
        index, epoch, seed = key if isinstance(key, tuple) else (key, 0, 0)
        oversized = []
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = load_rgb(Path(path), self.max_pixels)
            except OversizedImage:
                oversized += [path] if attempt == 0 else []
                continue
            except DECODE_ERRORS:
                continue
            torch.manual_seed(((seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63)
            return self.transform(image), label, [self.samples[index][0]] if attempt else [], oversized
        raise ConfigError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images in {self.root / self.split}, "
                          f"starting at {self.samples[index][0]}; is the dataset corrupt?")


def collate(batch: list[tuple[torch.Tensor, int, list[str], list[str]]]
            ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """Stack images and labels; concatenate the skipped and the oversized paths."""
    images, labels, skipped, oversized = zip(*batch, strict=True)
    return (torch.stack(images), torch.tensor(labels, dtype=torch.int64), [p for s in skipped for p in s],
            [p for s in oversized for p in s])
