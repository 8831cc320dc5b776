"""Datasets: ``fashion-mnist``, ``synthetic``, ``imagefolder:PATH`` and ``shards:DIR`` (the specs:
docs/formats.md).

Fashion-MNIST and the synthetic set live in memory as one ``uint8`` tensor and are augmented as whole
batches with tensor ops (pad, random crop by translation, horizontal flip, resize, normalize): that is
orders of magnitude faster than per-image PIL work on a 2-core machine. Image folders and shards hold
encoded images, decoded by DataLoader workers or on the GPU (:mod:`peffnet.data.images`, docs/data.md).

Every random choice of the data pipeline is a function of ``(seed, epoch, image index)`` only, never of
the batch an image lands in, so a run gives the same images whatever its micro-batch size, its number of
processes, or where it was interrupted and resumed (Section 3.4: with GN/LN+PN the dynamics do not
depend on the micro-batch size; we keep the data independent of it too).
"""

from __future__ import annotations

import functools
import gzip
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from peffnet.data.imagefolder import image_folder
from peffnet.data.preprocessing import Preprocessing
from peffnet.data.shards import shard_dataset
from peffnet.errors import ConfigError
from peffnet.settings import INT, POSITIVE, require

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SMALL_IMAGE_RESOLUTION = 32
"""Default training resolution of the 28x28 / 32x32 in-memory datasets (the 28 px image on a 32 px canvas)."""
SYNTHETIC_SIZES = {"train": 2560, "val": 512}
SYNTHETIC_CLASSES = 10
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
"""The labels 0-9 of Fashion-MNIST, as its authors name them (Xiao et al., 2017)."""
SYNTHETIC_CLASS_NAMES = tuple(f"prototype {i}" for i in range(SYNTHETIC_CLASSES))


SPECS = "fashion-mnist, synthetic, imagefolder:PATH or shards:DIR"
ENCODED_KINDS = ("imagefolder", "shards")
"""Data kinds of encoded images (photos at any size), as opposed to the 28/32 px in-memory sets."""


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"fashion-mnist"`` / ``"synthetic"`` / ``"imagefolder:PATH"`` / ``"shards:DIR"`` -> (kind, path or None)."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"--data is required: {SPECS}")
    kind, _, path = spec.partition(":")
    if kind in ENCODED_KINDS:
        if not path:
            raise ConfigError(f"{kind} needs a path: --data {kind}:{'PATH' if kind == 'imagefolder' else 'DIR'}")
        return kind, path
    if kind in ("fashion-mnist", "synthetic") and not path:
        return kind, None
    raise ConfigError(f"unknown data spec {spec!r}; use {SPECS}")


def in_memory(spec: str) -> bool:
    """Whether ``spec`` is one of the small in-memory sets (fashion-mnist, synthetic): their runs take the
    small-data defaults; image folders and shards take the paper's ImageNet settings."""
    return parse_spec(spec)[0] not in ENCODED_KINDS


def default_resolution(spec: str) -> int | None:
    """The dataset's default training resolution, or ``None`` for "the model's native resolution"."""
    return SMALL_IMAGE_RESOLUTION if in_memory(spec) else None


# --------------------------------------------------------------------------- in-memory datasets


def hash_uniform(seed: int, epoch: int, index: torch.Tensor, salt: int) -> torch.Tensor:
    """A uniform number in [0, 1) for every ``index``: a counter-based hash of (seed, epoch, index, salt).

    Vectorised integer mixing ("lowbias32"-style xorshift-multiply rounds, constants below 2**31 so int64
    products never overflow); one call replaces a generator per image.
    """
    mask = 0xFFFFFFFF
    x = (index.to(torch.int64) * 0x3C6EF372 + (seed * 0x2545F491 + epoch * 0x5BD1E995 + salt * 0x1B873593)) & mask
    for mult in (0x7FEB352D, 0x68E31DA4, 0x2C1B3C6D):
        x = ((x ^ (x >> 16)) * mult) & mask
    x = x ^ (x >> 15)
    return x.to(torch.float64).div_(2.0**32).to(torch.float32)


class TensorImageDataset(Dataset):
    """Images held in memory as one ``uint8`` tensor (N, C, H, W), preprocessed a batch at a time.

    Preprocessing: the image is zero-padded by ``pad`` onto a canvas of side ``H + 2 * pad``; training
    then translates it by up to ``max_shift`` pixels and flips it horizontally at random (the standard
    small-image augmentation), validation keeps it centred. The canvas is resized to ``resolution``
    (bilinear, antialiased) when the two differ, then normalized with the training set's mean and std:
    ``preprocessing``, the validation :class:`~peffnet.data.preprocessing.Preprocessing`, holds all of it.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
                 preprocessing: Preprocessing, train_transform: bool, max_shift: int, name: str) -> None:
        self.images, self.labels = images, labels.to(torch.int64)
        self.classes, self.num_classes, self.in_chans = list(classes), len(classes), images.shape[1]
        self.preprocessing, self.train_transform, self.max_shift, self.name = (
            preprocessing, train_transform, max_shift, name)
        self.resolution, self.pad = preprocessing.resolution, preprocessing.pad

    @property
    def mean(self) -> torch.Tensor:
        """The normalization's mean, (C, 1, 1)."""
        return torch.tensor(self.preprocessing.mean).view(-1, 1, 1)

    @property
    def std(self) -> torch.Tensor:
        return torch.tensor(self.preprocessing.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.get_batch(torch.tensor([index]), epoch=0, seed=0)
        return x[0], int(y[0])

    def to(self, device: torch.device) -> TensorImageDataset:
        """Keep the images on ``device``: batches are then cut, augmented and normalized there (on a GPU, no
        host work and no host-to-device copy per batch). Returns the dataset."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self

    def get_batch(self, indices: torch.Tensor, epoch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed float images (n, C, r, r) and labels of ``indices``, on the device the images are on."""
        if self.images.is_cuda and not indices.is_cuda:  # pinned, asynchronous: the host does not wait for the GPU
            indices = indices.pin_memory().to(self.images.device, non_blocking=True)
        x = self.images[indices]
        if not self.train_transform:
            return self.preprocessing.batch(x), self.labels[indices]
        canvas = x.shape[-1] + 2 * self.pad
        if self.max_shift > 0:
            border = self.pad + self.max_shift
            x = F.pad(x, (border,) * 4)
            span = 2 * self.max_shift + 1
            dy = (hash_uniform(seed, epoch, indices, 1) * span).long()
            dx = (hash_uniform(seed, epoch, indices, 2) * span).long()
            steps = torch.arange(canvas, device=x.device)
            rows = (dy[:, None] + steps)[:, None, :, None]
            cols = (dx[:, None] + steps)[:, None, None, :]
            image, chan = torch.arange(len(x), device=x.device), torch.arange(x.shape[1], device=x.device)
            x = x[image[:, None, None, None], chan[None, :, None, None], rows, cols]
        elif self.pad:
            x = F.pad(x, (self.pad,) * 4)
        flip = hash_uniform(seed, epoch, indices, 3) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return self.preprocessing.finish_canvas(x), self.labels[indices]


def read_idx(path: Path) -> torch.Tensor:
    """Decode an idx file (the MNIST format; ``.gz`` or plain) into a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        magic = int.from_bytes(raw[:4], "big")
        ndim = magic & 0xFF
        if magic >> 8 != 0x08 or ndim == 0:
            raise ValueError("not an unsigned-byte idx file")
        shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        body = raw[4 + 4 * ndim:]
        if len(body) != math.prod(shape):
            raise ValueError(f"expected {math.prod(shape)} bytes of data for shape {shape}, found {len(body)}")
        return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)
    except (OSError, ValueError, RuntimeError, EOFError) as err:
        raise ConfigError(f"cannot read Fashion-MNIST file {path}: {err}") from None


@functools.lru_cache(maxsize=4)
def fashion_mnist_arrays(data_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 28, 28) uint8, labels (N,)) of one split, decoded once per process."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"Fashion-MNIST directory {root} does not exist")
    arrays = []
    for stem in FASHION_FILES[split]:
        candidates = [root / f"{stem}.gz", root / stem]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise ConfigError(f"Fashion-MNIST file {stem}(.gz) not found in {root}")
        arrays.append(read_idx(found))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or len(images) == 0:
        raise ConfigError(f"Fashion-MNIST files in {root} are inconsistent: images {tuple(images.shape)}, "
                          f"labels {tuple(labels.shape)}")
    return images[:, None], labels


def synthetic_arrays(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, learnable synthetic set: 32x32 RGB class prototypes (smooth colour fields) plus noise."""
    g = torch.Generator().manual_seed(1234)
    protos = F.interpolate(torch.rand(SYNTHETIC_CLASSES, 3, 4, 4, generator=g), size=(32, 32), mode="bilinear",
                           align_corners=False)
    g.manual_seed(0 if split == "train" else 1)
    n = SYNTHETIC_SIZES[split]
    labels = torch.randint(0, SYNTHETIC_CLASSES, (n,), generator=g)
    images = protos[labels] * (0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))
    images = images + 0.2 * torch.randn(n, 3, 32, 32, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


# --------------------------------------------------------------------------- building datasets


DEFAULT_TRANSLATE = 4
"""Largest random shift, in pixels, of the Fashion-MNIST/synthetic training augmentation (``--translate``)."""


def build_dataset(spec: str, split: str, resolution: int, train_transform: bool, data_dir: str | None = None,
                  *, subset: int | None = None, translate: int = DEFAULT_TRANSLATE,
                  max_pixels: int | None = None, augment: str = "crop") -> Dataset:
    """The ``split`` ("train" or "val") of the dataset ``spec`` at ``resolution``, with ``.num_classes``,
    ``.in_chans``, ``.classes`` (the class names, by label) and ``.preprocessing`` (the validation
    :class:`~peffnet.data.preprocessing.Preprocessing` at ``resolution``, which checkpoints record).

    ``train_transform=False`` gives the validation preprocessing: for image folders, resize to
    ``r * 256 / 224`` then centre-crop ``r`` (paper Section 3.4, He et al.); for Fashion-MNIST and the
    synthetic set, the centred image on its canvas resized to ``r``. Fashion-MNIST is single-channel
    (``in_chans == 1``); its "val" split is the official 10 000-image test set. ``subset`` keeps a fixed,
    seeded random choice of that many images (quick runs and tests). ``translate`` is the largest random
    shift (pixels of the 32 px canvas) of the Fashion-MNIST/synthetic training augmentation, and of image folders
    and shards with ``augment="shift"`` (:data:`~peffnet.data.images.AUGMENTS`; in-memory sets ignore
    ``augment``). Image files with more than ``max_pixels`` pixels (default: PIL's limit) are skipped unread.
    """
    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
    kind, path = parse_spec(spec)
    if kind == "fashion-mnist":
        images, labels = fashion_mnist_arrays(str(data_dir or FASHION_MNIST_DIR), split)
        train_images = fashion_mnist_arrays(str(data_dir or FASHION_MNIST_DIR), "train")[0]
        mean, std = train_images.float().mean().item() / 255, train_images.float().std().item() / 255
        preprocessing = Preprocessing.canvas(resolution, images.shape[-1], 2, (mean,), (std,))
        dataset: Dataset = TensorImageDataset(images, labels, list(FASHION_MNIST_CLASSES), preprocessing,
                                              train_transform, max_shift=translate, name=spec)
    elif kind == "synthetic":
        images, labels = synthetic_arrays(split)
        preprocessing = Preprocessing.canvas(resolution, images.shape[-1], 0, (0.5,) * 3, (0.25,) * 3)
        dataset = TensorImageDataset(images, labels, list(SYNTHETIC_CLASS_NAMES), preprocessing, train_transform,
                                     max_shift=translate, name=spec)
    else:
        root = Path(data_dir, path) if data_dir else Path(path)  # a relative PATH is taken under --data-dir
        build = image_folder if kind == "imagefolder" else shard_dataset
        dataset = build(root, split, resolution, train_transform, max_pixels, augment, translate)
    return take_subset(dataset, subset) if subset is not None else dataset


def take_subset(dataset: Dataset, size: int) -> Dataset:
    """Restrict ``dataset`` (in place) to ``size`` images chosen by a fixed seeded permutation."""
    require("subset", size, INT, POSITIVE)
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:size].sort().values
    if isinstance(dataset, TensorImageDataset):
        dataset.images, dataset.labels = dataset.images[keep], dataset.labels[keep]
    else:
        dataset.select(keep.tolist())
    return dataset
