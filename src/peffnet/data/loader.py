"""Loaders: batches of one rank, one epoch at a time, resumable at any step (see docs/formats.md for the
data specs)."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from peffnet.data.datasets import TensorImageDataset
from peffnet.data.decode import DeviceDecoder
from peffnet.data.images import Batch, ImageDataset, collate, finish
from peffnet.data.preprocessing import Preprocessing
from peffnet.errors import ConfigError

DECODE_MODES = ("auto", "cpu", "device")
"""Where JPEGs are decoded: ``cpu`` in the DataLoader workers, ``device`` on the training device (nvJPEG on a
GPU), ``auto`` the faster of the two as measured when the loader is made (``cpu`` without a GPU)."""


def _end_at_sigterm_from_parent() -> None:
    """Thread of a worker: wait for SIGTERM (blocked in the worker's threads) and end the worker only when its
    parent sent it (the DataLoader ending a worker that does not stop); a scheduler's SIGTERM is ignored."""
    parent = os.getppid()
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(128 + signal.SIGTERM)


def worker_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the DataLoader workers. The main process decides when a run stops (it finishes its
    step, or the evaluation in progress, and checkpoints; its DataLoader then ends the workers), but Ctrl-C
    (SIGINT to the terminal's process group) and SLURM (signals to every process of a job step) reach the
    workers too: they ignore SIGINT and SIGUSR1, and SIGTERM unless their parent sent it. (A worker whose
    parent dies ends by itself: the DataLoader's watchdog.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):  # Linux; elsewhere a SIGTERM ends a worker at once
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        # A thread that started before this function (a multiprocessing queue's feeder, seen in workers forked
        # beside an earlier DataLoader) does not block SIGTERM: one that lands there is caught and dropped, as a
        # signal whose sender cannot be known, instead of killing the worker.
        signal.signal(signal.SIGTERM, _drop)
        threading.Thread(target=_end_at_sigterm_from_parent, daemon=True).start()


def _drop(signum: int, frame: object) -> None:
    """A Python-level handler that does nothing."""


class Loader:
    """Batches of one rank, one epoch at a time; resumable at any step of an epoch.

    Training (``shuffle=True``): the epoch's order is a seeded permutation of the whole dataset; step
    ``s`` takes global batch ``perm[s*B:(s+1)*B]`` (the last incomplete batch is dropped) and rank ``r``
    of ``W`` its ``r``-th slice of ``B/W`` images. So the global batch is the same for any world size:
    this is the sharding of ``DistributedSampler``, done per step so a run can restart mid-epoch.
    Evaluation (``shuffle=False``): rank ``r`` takes images ``r, r+W, ...`` in batches of ``batch_size``.

    Iterating yields ``(images, labels)``. In-memory datasets make their batches with tensor ops on the device
    they are on. Encoded images (:class:`~peffnet.data.images.ImageDataset`) come from ``workers`` DataLoader
    processes (started for each epoch and ended with it) as 8-bit batches, in pinned memory for a GPU, finished on
    ``device`` (:func:`~peffnet.data.images.finish`; decoded there too with ``decode="device"``). Image files
    skipped on the way (unreadable, or over the pixel limit) are listed in :attr:`skipped`, those over the
    limit also in :attr:`oversized`.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: int = 0, pin_memory: bool = False,
                 device: torch.device | None = None, decode: str = "cpu") -> None:
        if shuffle and batch_size % world_size:
            raise ConfigError(f"global batch {batch_size} is not divisible by the {world_size} processes")
        if shuffle and len(dataset) < batch_size:
            raise ConfigError(f"the training set has {len(dataset)} images, fewer than one global batch "
                              f"({batch_size}); lower --batch-size")
        if decode not in DECODE_MODES[1:]:
            raise ConfigError(f"decode must be one of {', '.join(DECODE_MODES[1:])}, got {decode!r}")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.rank, self.world_size, self.workers, self.pin_memory = rank, world_size, workers, pin_memory
        self.device, self.decode = device or torch.device("cpu"), decode
        self.epoch, self.start_step = 0, 0
        self.skipped: list[str] = []
        self.oversized: list[str] = []

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch ``epoch`` from its step ``start_step`` (mid-epoch resume)."""
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        """Steps in a full epoch (for training: global batches; for evaluation: this rank's batches)."""
        if self.shuffle:
            return len(self.dataset) // self.batch_size
        return math.ceil(len(range(self.rank, len(self.dataset), self.world_size)) / self.batch_size)

    def index_batches(self) -> list[torch.Tensor]:
        """The dataset indices of this rank's batches, from ``start_step`` to the end of the epoch."""
        if not self.shuffle:
            return list(torch.arange(self.rank, len(self.dataset), self.world_size).split(self.batch_size))
        perm = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(
            self.seed * 100_003 + self.epoch))
        local = self.batch_size // self.world_size
        return [perm[s * self.batch_size + self.rank * local: s * self.batch_size + (self.rank + 1) * local]
                for s in range(self.start_step, len(self))]

    def keys(self) -> Iterator[list[int | tuple[int, int, int]]]:
        """The DataLoader's batches of sample keys: (index, epoch, seed) when training, else the index."""
        for idx in self.index_batches():
            yield [(i, self.epoch, self.seed) if self.shuffle else i for i in idx.tolist()]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(self.dataset, TensorImageDataset):
            for idx in self.index_batches():
                yield self.dataset.get_batch(idx, self.epoch, self.seed)
            return
        self.dataset.decode = self.decode  # before the workers start: they hold a copy of the dataset
        finished = self.dataset.preprocessing if self.device.type != "cuda" else None  # for a CPU: by the workers
        batches = DataLoader(WorkerView(self.dataset, finished), batch_sampler=list(self.keys()),
                             num_workers=self.workers, collate_fn=as_batch, pin_memory=self.pin_memory,
                             worker_init_fn=worker_signals if self.workers else None)
        decoder = DeviceDecoder(self.device, self.dataset.preprocessing.interpolation)
        try:
            for batch in batches:
                images = finish(batch, self.device, self.dataset.preprocessing, decoder)
                self.skipped.extend(batch.skipped)
                self.oversized.extend(batch.oversized)
                yield images, batch.labels
        except ConfigError as err:  # from a worker, the message carries the worker's traceback: keep its last line
            raise ConfigError(str(err).strip().splitlines()[-1].removeprefix("peffnet.errors.ConfigError: ")) from None


class WorkerView(Dataset):
    """What the DataLoader's workers index: a whole batch of keys at once (``__getitems__``), made by
    :meth:`~peffnet.data.images.ImageDataset.batch` -- finished with ``preprocessing`` for a CPU device."""

    def __init__(self, dataset: ImageDataset, preprocessing: Preprocessing | None) -> None:
        self.dataset, self.preprocessing = dataset, preprocessing

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list[int | tuple[int, int, int]]) -> Batch:
        return self.dataset.batch(keys, self.preprocessing)


def as_batch(batch: Batch) -> Batch:
    """The DataLoader's ``collate_fn``: the worker's :class:`~peffnet.data.images.Batch` is made already."""
    return batch


def decoder_rates(dataset: ImageDataset, device: torch.device, workers: int, count: int = 64) -> dict[str, float]:
    """Images per second of the two decoders on the first ``count`` images of ``dataset``: ``cpu``, the rate
    of one process decoding with Pillow times ``workers``; ``device``, the lesser of the device decoding one
    batch (timed after a warm-up batch) and ``workers`` processes reading and planning."""
    keys = list(range(min(count, len(dataset))))
    mode = dataset.decode
    rates = {}
    try:
        for decode in DECODE_MODES[1:]:
            dataset.decode = decode
            start = time.process_time()
            samples = [dataset.sample(i) for i in keys]
            rates[decode] = len(keys) / max(time.process_time() - start, 1e-9) * max(1, workers)
        batch = collate(samples, len(samples), dataset.resolution)
        decoder = DeviceDecoder(device, dataset.preprocessing.interpolation)
        for _ in range(2):  # the first batch warms the decoder up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            try:
                finish(batch, device, dataset.preprocessing, decoder)
            except (RuntimeError, ValueError, OSError):  # no usable device decoder here (a torchvision without it)
                rates["device"] = 0.0
                break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        else:
            rates["device"] = min(rates["device"], len(keys) / (time.perf_counter() - start))
    finally:
        dataset.decode = mode
    return rates


def choose_decode(dataset: Dataset, device: torch.device, workers: int, decode: str = "auto") -> str:
    """``decode`` as asked; ``auto``: ``device`` on a GPU where :func:`decoder_rates` measures it faster than
    the CPU workers -- on every process of a torchrun job, so that all decode alike -- else ``cpu`` (always
    ``cpu`` for the in-memory sets, which are not decoded at all)."""
    if decode not in DECODE_MODES:
        raise ConfigError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    if not isinstance(dataset, ImageDataset):
        return "cpu"
    if decode != "auto":
        return decode
    if device.type != "cuda":
        return "cpu"
    rates = decoder_rates(dataset, device, workers)
    faster = torch.tensor(int(rates["device"] > rates["cpu"]), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(faster, op=torch.distributed.ReduceOp.MIN)
    return "device" if faster.item() else "cpu"


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, workers: int | None = None, device: torch.device | None = None,
                decode: str = "auto") -> Loader:
    """A (possibly distributed) loader for training on ``device``: ``train=True`` shuffles and shards global
    batches of ``batch_size``; ``train=False`` shards the set for evaluation in per-rank batches of
    ``batch_size``. ``workers`` (image folders and shards only) defaults to the CPU cores per process, at most 8.
    On a GPU, in-memory datasets move there (batches are made on the device) and encoded images' batches come
    in pinned memory; ``decode`` (``auto``, ``cpu``, ``device``) says where JPEGs are decoded (:func:`choose_decode`).
    """
    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    if cuda and isinstance(dataset, TensorImageDataset):
        dataset.to(device)
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 1) // world_size))
    return Loader(dataset, batch_size, shuffle=train, seed=seed, rank=rank, world_size=world_size,
                  workers=workers, pin_memory=cuda and not isinstance(dataset, TensorImageDataset), device=device,
                  decode=choose_decode(dataset, device, workers, decode))
