"""Datasets of encoded images -- files of an image folder or members of tar shards -- read through one
interface, :class:`ImageDataset`, and turned into batches in three stages (FFCV's pipeline, in small):

1. **read and plan** (DataLoader workers): a sample's bytes come from its :class:`Source`; the header gives
   the image's size (a file over the pixel limit is refused here, unread), and the size and (seed, epoch,
   index) give its :class:`~peffnet.data.decode.Plan` -- crop box and flip;
2. **decode** (the swappable stage, :mod:`peffnet.data.decode`): in the worker with Pillow at a reduced DCT
   scale, or, with ``decode="device"``, on the GPU in the main process (the worker only ships the bytes);
3. **finish** (:func:`finish`): for a GPU the 8-bit batch is copied there (pinned memory: 4x fewer bytes than
   floats) and scaled and normalized there with the dataset's mean and std; for a CPU the workers do it, while
   the image is in their cache (a batch normalized after collation runs at memory speed, several times slower).

A file that cannot be read (missing, truncated, corrupt, not an image) or is over the pixel limit does not
stop the epoch: its slot takes the next readable sample of the dataset, so every batch keeps its size, and its
name is reported back through the batch (:attr:`peffnet.data.Loader.skipped`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.utils.data import Dataset

from peffnet.data.decode import (
    DECODE_ERRORS,
    DeviceDecoder,
    OversizedImage,
    Plan,
    centre_plan,
    decode_box,
    device_decodable,
    open_image,
    shift_plan,
    train_plan,
)
from peffnet.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from peffnet.errors import ConfigError

MAX_CONSECUTIVE_FAILURES = 32
AUGMENTS = ("crop", "shift")
"""Training augmentations of encoded images: ``crop``, He et al.'s random-resized crop and flip (the paper's,
Section 3.4; validation resizes to ``r * 256 / 224`` and crops the centre ``r``); ``shift``, the in-memory sets'
shift and flip for small images written as files (validation: the image resized to ``r``)."""


class Source(Protocol):
    """Where a dataset's encoded samples come from (an image folder's files, a split of tar shards)."""

    classes: list[str]
    where: str  # for messages: the folder or the shards' directory and split

    def __len__(self) -> int: ...

    def label(self, index: int) -> int: ...

    def name(self, index: int) -> str:
        """The sample's name in reports: a file's path, or ``SHARD.tar:KEY``."""

    def read(self, index: int) -> bytes:
        """The sample's encoded bytes (``OSError`` when they cannot be read)."""

    def select(self, keep: list[int]) -> None:
        """Keep only the samples ``keep``, in that order (subsets)."""


@dataclass
class Sample:
    """One image on its way from a worker: decoded 8-bit ``pixels`` (3, size, size), or the JPEG ``data`` the
    device decodes with ``plan``; its label; its own file if it was skipped, and if it was over the pixel limit."""

    label: int
    pixels: torch.Tensor | None = None
    data: torch.Tensor | None = None
    plan: Plan | None = None
    name: str = ""
    skipped: list[str] = field(default_factory=list)
    oversized: list[str] = field(default_factory=list)


@dataclass
class Batch:
    """Samples stacked: ``pixels`` (n, 3, size, size), 8-bit or, for a CPU device, the float input finished by
    :func:`collate`, whose rows ``rows`` still wait for the device decoder (their files
    ``data``, ``plans`` and ``names``), labels, and the files skipped on the way."""

    pixels: torch.Tensor
    labels: torch.Tensor
    rows: list[int]
    data: list[torch.Tensor]
    plans: list[Plan]
    names: list[str]
    skipped: list[str]
    oversized: list[str]

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread: page-locked pixels copy to a GPU without blocking."""
        self.pixels, self.labels = self.pixels.pin_memory(), self.labels.pin_memory()
        return self


def collate(samples: Iterable[Sample], count: int, size: int, preprocessing: Preprocessing | None = None) -> Batch:
    """``count`` samples (``size`` px) into a :class:`Batch`, each written into the batch as it comes (rows left
    for the device decoder are zeros until decoded). With ``preprocessing`` (a CPU device) each image is scaled
    and normalized as it is written: given a generator that decodes the samples one by one, that is one pass
    over each image while it is in the cache (normalizing the batch afterwards runs at memory speed)."""
    pixels = torch.empty(count, 3, size, size, dtype=torch.uint8 if preprocessing is None else torch.float32)
    labels, rows, data, plans, names, skipped, oversized = [], [], [], [], [], [], []
    for row, s in enumerate(samples):
        labels.append(s.label)
        skipped += s.skipped
        oversized += s.oversized
        if s.pixels is None:
            rows.append(row)
            data.append(s.data)
            plans.append(s.plan)
            names.append(s.name)
            pixels[row] = 0
        elif preprocessing is not None:
            preprocessing.finish_image(s.pixels, out=pixels[row])
        else:
            pixels[row] = s.pixels
    return Batch(pixels, torch.tensor(labels, dtype=torch.int64), rows, data, plans, names, skipped, oversized)


class ImageDataset(Dataset):
    """One split of encoded images at ``resolution``: the paper's training augmentation (random-resized crop,
    flip; ``train=True``) or the validation preprocessing (centre crop, :class:`Preprocessing`).

    ``augment`` (:data:`AUGMENTS`) is ``crop`` for photos, ``shift`` (by up to ``translate`` pixels) for small
    images. ``dataset[i]`` is ``(image, label)``: the normalized float image (3, r, r) as evaluation sees it (the same
    as :class:`~peffnet.data.datasets.TensorImageDataset`); :meth:`sample` is what the loader's workers call.
    ``classes`` are the class names by label, ``preprocessing`` the validation preprocessing at ``resolution``.
    The loader sets ``decode``: ``"cpu"`` (workers decode) or ``"device"`` (workers ship JPEG bytes, :func:`finish`
    decodes).
    """

    in_chans = 3

    def __init__(self, source: Source, resolution: int, train: bool, max_pixels: int | None = None,
                 augment: str = "crop", translate: int = 0) -> None:
        if augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        self.source, self.resolution, self.train, self.max_pixels = source, resolution, train, max_pixels
        self.classes, self.num_classes = list(source.classes), len(source.classes)
        self.augment, self.translate = augment, translate
        self.preprocessing = (Preprocessing.image_folder(resolution) if augment == "crop" else
                              Preprocessing(resolution, resolution, IMAGENET_MEAN, IMAGENET_STD))
        self.decode = "cpu"

    def __len__(self) -> int:
        return len(self.source)

    def select(self, keep: list[int]) -> None:
        """Keep only the samples ``keep`` (a fixed subset)."""
        self.source.select(keep)

    def plan(self, width: int, height: int, index: int, epoch: int, seed: int) -> Plan:
        if self.train:
            if self.augment == "shift":
                return shift_plan(width, height, self.translate, seed, epoch, index)
            return train_plan(width, height, seed, epoch, index)
        return centre_plan(width, height, self.resolution, self.preprocessing.resize)

    def sample(self, key: int | tuple[int, int, int]) -> Sample:
        """``key`` is an index, or (index, epoch, seed) for the random augmentation of that epoch.

        An unreadable file's slot takes the next readable one (planned with this index's random draws); only
        the index's own file is reported (a failing substitute is reported when its own turn comes).
        """
        index, epoch, seed = key if isinstance(key, tuple) else (key, 0, 0)
        oversized = []
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            i = (index + attempt) % len(self.source)
            try:
                data = self.source.read(i)
                image = open_image(io.BytesIO(data), self.max_pixels)
                plan = self.plan(image.width, image.height, index, epoch, seed)
                skipped = [self.source.name(index)] if attempt else []
                if self.decode == "device" and device_decodable(image):
                    return Sample(self.source.label(i), data=torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                  plan=plan, name=self.source.name(i), skipped=skipped, oversized=oversized)
                pixels = decode_box(image, plan, self.resolution, self.preprocessing.interpolation)
                return Sample(self.source.label(i), pixels, skipped=skipped, oversized=oversized)
            except ConfigError:  # a damaged shard: not one bad file, the whole source is in question
                raise
            except OversizedImage:
                oversized += [self.source.name(i)] if attempt == 0 else []
            except DECODE_ERRORS:
                pass
        raise ConfigError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images in {self.source.where}, "
                          f"starting at {self.source.name(index)}; is the dataset corrupt?")

    def batch(self, keys: list[int | tuple[int, int, int]], preprocessing: Preprocessing | None = None) -> Batch:
        """The samples of ``keys`` as a :class:`Batch`, each decoded and written into it in turn (what a
        DataLoader worker makes; :func:`collate`)."""
        return collate((self.sample(key) for key in keys), len(keys), self.resolution, preprocessing)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        batch = self.batch([index], self.preprocessing)
        images = finish(batch, torch.device("cpu"), self.preprocessing)
        return images[0], int(batch.labels[0])


def finish(batch: Batch, device: torch.device, preprocessing: Preprocessing, decoder: DeviceDecoder | None = None
           ) -> torch.Tensor:
    """The network's input of a batch on ``device``, (n, 3, r, r) float32: the rows left to the device decoded
    there, 8-bit rows scaled to [0, 1] and normalized. A file the device decoder refuses is decoded on the CPU;
    one that does not decode at all takes the pixels of the batch's first image and joins ``batch.skipped``
    (rare: the workers already read its header)."""
    decoded = decode_rows(batch, device, preprocessing, decoder) if batch.rows else {}
    if batch.pixels.is_floating_point():  # finished by collate(); the rows decoded here are 8-bit
        images = batch.pixels.to(device, non_blocking=True)
        for row, rgb in decoded.items():
            preprocessing.finish_image(rgb, out=images[row])
        return images
    pixels = batch.pixels.to(device, non_blocking=True)
    for row, rgb in decoded.items():
        pixels[row] = rgb
    return preprocessing.finish_image(pixels)


def decode_rows(batch: Batch, device: torch.device, preprocessing: Preprocessing, decoder: DeviceDecoder | None
                ) -> dict[int, torch.Tensor]:
    """The 8-bit images (3, size, size) of the rows left to the device decoder, by row."""
    size = preprocessing.resolution
    images = (decoder or DeviceDecoder(device, preprocessing.interpolation))(batch.data, batch.plans, size)
    decoded, failed = {}, []
    for row, image, data, plan, name in zip(batch.rows, images, batch.data, batch.plans, batch.names, strict=True):
        try:
            decoded[row] = image if image is not None else decode_box(
                open_image(io.BytesIO(data.numpy().tobytes())), plan, size, preprocessing.interpolation).to(device)
        except DECODE_ERRORS:
            failed.append(row)
            batch.skipped.append(name)
    if failed:
        good = next((row for row in decoded), None)
        if good is None:
            raise ConfigError(f"no image of a batch decodes on the device (first: {batch.names[0]}); is the "
                              "dataset corrupt?")
        decoded.update({row: decoded[good] for row in failed})
    return decoded
