"""Tar shards in the WebDataset convention, with an index for random access: ``peffnet data pack`` writes
them from an image folder, ``--data shards:DIR`` trains from them (the format: docs/formats.md, "Shards";
why this format: docs/data.md).

A shard is a plain POSIX tar: sample ``KEY`` (its number in the split, 8 digits) is the members ``KEY.EXT``
(the image's bytes, EXT its format: ``jpg``, ``png``, ...) and ``KEY.cls`` (the label as decimal text), the
layout ``webdataset``, ``wids`` and ``tar`` itself read. Beside the shards, ``index.json`` holds the classes
and the shards of each split (file, samples, bytes), and ``SPLIT-index.npy`` one row per sample: shard number,
byte offset and size of the image member's data, label; ``SPLIT-files.txt`` the file each sample was packed from
(its path under the folder, one a line, in sample order). With the index a sample is one ``pread`` -- the dataset is
random-access, so :class:`peffnet.data.Loader` shards it over ranks exactly as an image folder (every sample
once per epoch, the same global batches for any number of processes, resumable at any step) -- and nothing
beyond Python's standard library and numpy is needed to read it.

Packing shuffles the samples (a fixed seed), so that a streaming reader sees the classes mixed, and checks every
file: unreadable ones (corrupt, truncated, over the pixel limit) are left out and listed in ``index.json``.
``max_side`` re-encodes images whose longest side is larger at that side (JPEG, ``quality``): decoding cost falls
with the pixels stored (FFCV's trick); what it does to small crops: docs/data.md.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from peffnet.data.decode import DECODE_ERRORS, OversizedImage, open_image, to_rgb
from peffnet.data.imagefolder import class_folders, list_images
from peffnet.data.images import ImageDataset
from peffnet.errors import ConfigError
from peffnet.files import write_file

FORMAT = "peffnet-shards-v1"
INDEX = "index.json"
SPLITS = ("train", "val")
PACK_SEED = 0
"""Seed of the order samples are packed in."""
OPEN_SHARDS = 64
"""Shard files a process keeps open at most."""
TAR_BLOCK = tarfile.BLOCKSIZE


def split_index_file(split: str) -> str:
    return f"{split}-index.npy"


def split_files_file(split: str) -> str:
    return f"{split}-files.txt"


# --------------------------------------------------------------------------- reading


def read_index(root: Path) -> dict:
    """``index.json`` of a shard directory, checked; one-line errors for anything else."""
    path = root / INDEX
    if not root.is_dir():
        raise ConfigError(f"shard directory {root} does not exist")
    if not path.is_file():
        raise ConfigError(f"{root} holds no shards: no {INDEX} (write one with `peffnet data pack`)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a peffnet shard index (format {FORMAT!r})")
    return meta


class ShardSource:
    """One split of a shard directory, as a :class:`~peffnet.data.images.Source`. Building it checks that every
    shard is there at the size the index records (a missing or truncated shard is one line naming it)."""

    def __init__(self, root: Path, split: str) -> None:
        meta = read_index(root)
        entry = meta["splits"].get(split)
        if entry is None:
            raise ConfigError(f"{root} has no {split} shards (splits: {', '.join(meta['splits']) or 'none'})")
        self.files = [root / s["file"] for s in entry["shards"]]
        for shard, path in zip(entry["shards"], self.files, strict=True):
            if not path.is_file():
                raise ConfigError(f"shard {path} is missing ({shard['samples']} samples of {split})")
            if path.stat().st_size != shard["bytes"]:
                raise ConfigError(f"shard {path} is damaged: {path.stat().st_size} bytes, {INDEX} records "
                                  f"{shard['bytes']} (truncated or replaced; restore it or pack again)")
        try:
            self.table = np.load(root / split_index_file(split))
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read {root / split_index_file(split)}: {err}") from None
        if self.table.shape != (entry["samples"], 4):
            raise ConfigError(f"{root / split_index_file(split)} has {self.table.shape[0]} rows, {INDEX} records "
                              f"{entry['samples']} samples of {split}")
        self.classes, self.where = list(meta["classes"]), f"{root} ({split} shards)"
        self.rows = np.arange(len(self.table))
        self._open: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}  # file descriptors stay in their process

    def label(self, index: int) -> int:
        return int(self.table[self.rows[index], 3])

    def name(self, index: int) -> str:
        row = int(self.rows[index])
        return f"{self.files[int(self.table[row, 0])]}:{row:08d}"

    def select(self, keep: list[int]) -> None:
        self.rows = self.rows[keep]

    def _fd(self, shard: int) -> int:
        if shard not in self._open:
            if len(self._open) >= OPEN_SHARDS:
                os.close(self._open.pop(next(iter(self._open))))
            self._open[shard] = os.open(self.files[shard], os.O_RDONLY)
        return self._open[shard]

    def read(self, index: int) -> bytes:
        """The image member's bytes, after checking that the tar header before them names this sample."""
        row = int(self.rows[index])
        shard, offset, size, _ = (int(v) for v in self.table[row])
        block = os.pread(self._fd(shard), TAR_BLOCK + size, offset - TAR_BLOCK)
        name = block[:100].split(b"\0", 1)[0].decode("ascii", "replace")
        if len(block) != TAR_BLOCK + size or not name.startswith(f"{row:08d}."):
            raise ConfigError(f"shard {self.files[shard]} is damaged: sample {row:08d} is not at byte {offset} "
                              f"(found {name[:40]!r}); restore it or pack again")
        return block[TAR_BLOCK:]

    def __del__(self) -> None:
        for fd in getattr(self, "_open", {}).values():
            os.close(fd)


def shard_dataset(root: Path, split: str, resolution: int, train: bool, max_pixels: int | None = None,
                  augment: str = "crop", translate: int = 0) -> ImageDataset:
    """One split of a shard directory at ``resolution`` (training augmentation when ``train``)."""
    return ImageDataset(ShardSource(root, split), resolution, train, max_pixels, augment, translate)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Packed:
    """One file ready for a shard: its bytes and extension, or why it was left out."""

    path: str
    label: int
    data: bytes = b""
    ext: str = ""
    reason: str = ""


def prepare(job: tuple[str, int, int | None, int, int | None]) -> Packed:
    """Read and check one file (a full decode); re-encode it at ``max_side`` if it is larger."""
    path, label, max_side, quality, max_pixels = job
    try:
        with open(path, "rb") as f:
            data = f.read()
        with open_image(io.BytesIO(data), max_pixels) as image:
            fmt = (image.format or "").lower()
            if max_side and max(image.size) > max_side:
                image.draft("RGB", (image.width * max_side // max(image.size) * 2,
                                    image.height * max_side // max(image.size) * 2))
                image.load()
                rgb = to_rgb(image)
                scale = max_side / max(rgb.size)
                rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                                 Image.Resampling.LANCZOS)
                out = io.BytesIO()
                rgb.save(out, "JPEG", quality=quality)
                return Packed(path, label, out.getvalue(), "jpg")
            image.load()
    except OversizedImage as err:
        return Packed(path, label, reason=f"over the pixel limit: {err}")
    except DECODE_ERRORS as err:
        return Packed(path, label, reason=str(err).splitlines()[0] if str(err) else type(err).__name__)
    ext = {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt) or Path(path).suffix.lstrip(".").lower()
    return Packed(path, label, data, ext)


def pack(source: Path, out: Path, max_side: int | None = None, quality: int = 90, shard_bytes: int = 256 << 20,
         workers: int = 1, max_pixels: int | None = None) -> dict:
    """Write the image folder ``source`` (train/ and val/) as shards into ``out``; returns ``index.json``'s
    record. Unreadable files, and files over ``max_pixels`` (default: PIL's limit), are left out and listed
    (``left_out``: path and reason per split)."""
    if (out / INDEX).exists():
        raise ConfigError(f"{out} already holds shards ({INDEX}); choose another --out")
    splits = [s for s in SPLITS if (source / s).is_dir()]
    if not splits:
        raise ConfigError(f"{source} has neither train/ nor val/ (expected SPLIT/CLASS/*.jpg)")
    classes = [p.name for p in class_folders(source, splits[0])]
    out.mkdir(parents=True, exist_ok=True)
    meta: dict = {"format": FORMAT, "classes": classes, "source": str(source), "max_side": max_side,
            "quality": quality if max_side else None, "splits": {}}
    for split in splits:
        files = []
        for folder in class_folders(source, split):
            if folder.name not in classes:
                raise ConfigError(f"{source / split} has class folder {folder.name!r} that {splits[0]}/ does not have")
            files += [(str(f), classes.index(folder.name)) for f in list_images(folder)]
        order = np.random.default_rng(PACK_SEED).permutation(len(files))
        jobs = [(*files[i], max_side, quality, max_pixels) for i in order]
        if workers > 1:
            with multiprocessing.Pool(workers) as pool:
                meta["splits"][split] = write_split(out, split, pool.imap(prepare, jobs, chunksize=16), shard_bytes)
        else:
            meta["splits"][split] = write_split(out, split, map(prepare, jobs), shard_bytes)
        packed = meta["splits"][split].pop("files")
        write_file(out / split_files_file(split), "".join(f"{Path(p).relative_to(source)}\n" for p in packed))
    write_file(out / INDEX, json.dumps(meta, indent=1) + "\n")
    return meta


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """Write ``members`` (name, bytes) as a ustar tar, whole or not at all (:func:`peffnet.files.write_file`)."""
    def write(f: IO[bytes]) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o444
                tar.addfile(info, io.BytesIO(data))
    write_file(path, write)


def write_split(out: Path, split: str, packed: Iterable[Packed], shard_bytes: int) -> dict:
    """Write one split's samples into shards of about ``shard_bytes``; its ``index.json`` entry. A member's
    data starts one header block after the member (ustar, names under 100 characters) and takes whole blocks."""
    shards, rows, left_out, files, members, used = [], [], [], [], [], 0

    def flush() -> None:
        if members:
            path = out / shards[-1]["file"]
            write_tar(path, members)
            shards[-1]["bytes"] = path.stat().st_size
            members.clear()

    for item in packed:
        if item.reason:
            left_out.append({"path": item.path, "reason": item.reason})
            continue
        if not shards or used >= shard_bytes:
            flush()
            shards.append({"file": f"{split}-{len(shards):06d}.tar", "samples": 0, "bytes": 0})
            used = 0
        key, label = f"{len(rows):08d}", str(item.label).encode()
        members += [(f"{key}.{item.ext}", item.data), (f"{key}.cls", label)]
        rows.append((len(shards) - 1, used + TAR_BLOCK, len(item.data), item.label))
        used += sum(TAR_BLOCK + -(-len(data) // TAR_BLOCK) * TAR_BLOCK for data in (item.data, label))
        files.append(item.path)
        shards[-1]["samples"] += 1
    flush()
    write_file(out / split_index_file(split), lambda f: np.save(f, np.array(rows, dtype=np.int64).reshape(-1, 4)))
    return {"samples": len(rows), "shards": shards, "left_out": left_out, "files": files}
