"""ImageNet-layout image folders (``PATH/train/CLASS/*.jpg``, ``PATH/val/CLASS/*.jpg``): the files of one split
as a :class:`~peffnet.data.images.Source` of :class:`~peffnet.data.images.ImageDataset`.

The layout is checked when the dataset is built: missing or empty folders, and a class none of whose files
decodes, are one-line errors. Every file becomes 8-bit RGB whatever its mode (grayscale, palette, CMYK, 16-bit,
with alpha, ...); a file that cannot be decoded or is over the pixel limit is skipped and reported
(:mod:`peffnet.data.images`).
"""

from __future__ import annotations

from pathlib import Path

from peffnet.data.decode import DECODE_ERRORS, open_image
from peffnet.data.images import ImageDataset
from peffnet.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


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


class FolderSource:
    """The image files of ``root/split``, as a :class:`~peffnet.data.images.Source`. Class indices follow the
    sorted class names of ``train/`` (or of ``val/`` when there is no ``train/``), so both splits agree."""

    def __init__(self, root: Path, split: str, max_pixels: int | None = None) -> None:
        train_classes = [p.name for p in class_folders(root, "train")] if (root / "train").is_dir() else None
        folders = class_folders(root, split)
        self.classes = train_classes or [p.name for p in folders]
        unknown = [p.name for p in folders if p.name not in self.classes]
        if unknown:
            raise ConfigError(f"{root / split} has class folder {unknown[0]!r} that train/ does not have")
        index = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for p in folders:
            files = list_images(p)
            check_class_readable(p.name, files, max_pixels)
            self.samples += [(str(f), index[p.name]) for f in files]
        self.where = str(root / split)

    def __len__(self) -> int:
        return len(self.samples)

    def label(self, index: int) -> int:
        return self.samples[index][1]

    def name(self, index: int) -> str:
        return self.samples[index][0]

    def read(self, index: int) -> bytes:
        with open(self.samples[index][0], "rb") as f:
            return f.read()

    def select(self, keep: list[int]) -> None:
        self.samples = [self.samples[i] for i in keep]


def image_folder(root: Path, split: str, resolution: int, train: bool, max_pixels: int | None = None,
                 augment: str = "crop", translate: int = 0) -> ImageDataset:
    """One split of an ImageNet-layout folder at ``resolution`` (training augmentation when ``train``)."""
    return ImageDataset(FolderSource(root, split, max_pixels), resolution, train, max_pixels, augment, translate)
