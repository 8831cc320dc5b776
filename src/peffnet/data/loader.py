"""Loaders: batches of one rank, one epoch at a time, resumable at any step (see docs/formats.md for the
data specs)."""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from peffnet.data.datasets import TensorImageDataset
from peffnet.data.imagefolder import collate
from peffnet.errors import ConfigError


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
        threading.Thread(target=_end_at_sigterm_from_parent, daemon=True).start()


class Loader:
    """Batches of one rank, one epoch at a time; resumable at any step of an epoch.

    Training (``shuffle=True``): the epoch's order is a seeded permutation of the whole dataset; step
    ``s`` takes global batch ``perm[s*B:(s+1)*B]`` (the last incomplete batch is dropped) and rank ``r``
    of ``W`` its ``r``-th slice of ``B/W`` images. So the global batch is the same for any world size:
    this is the sharding of ``DistributedSampler``, done per step so a run can restart mid-epoch.
    Evaluation (``shuffle=False``): rank ``r`` takes images ``r, r+W, ...`` in batches of ``batch_size``.

    Iterating yields ``(images, labels)``; image files skipped on the way (unreadable, or over the pixel limit)
    are listed in :attr:`skipped`, those over the limit also in :attr:`oversized` (see
    :class:`peffnet.data.imagefolder.ImageFolderDataset`).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: int = 0, pin_memory: bool = False) -> None:
        if shuffle and batch_size % world_size:
            raise ConfigError(f"global batch {batch_size} is not divisible by the {world_size} processes")
        if shuffle and len(dataset) < batch_size:
            raise ConfigError(f"the training set has {len(dataset)} images, fewer than one global batch "
                              f"({batch_size}); lower --batch-size")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.rank, self.world_size, self.workers, self.pin_memory = rank, world_size, workers, pin_memory
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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.index_batches()
        if isinstance(self.dataset, TensorImageDataset):
            for idx in batches:
                yield self.dataset.get_batch(idx, self.epoch, self.seed)
            return
        keys = [[(i, self.epoch, self.seed) if self.shuffle else i for i in idx.tolist()] for idx in batches]
        loader = DataLoader(self.dataset, batch_sampler=keys, num_workers=self.workers, collate_fn=collate,
                            pin_memory=self.pin_memory, worker_init_fn=worker_signals if self.workers else None)
        try:
            for images, labels, skipped, oversized in loader:
                self.skipped.extend(skipped)
                self.oversized.extend(oversized)
                yield images, labels
        except ConfigError as err:  # from a worker, the message carries the worker's traceback: keep its last line
            raise ConfigError(str(err).strip().splitlines()[-1].removeprefix("peffnet.errors.ConfigError: ")) from None


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, workers: int | None = None, device: torch.device | None = None) -> Loader:
    """A (possibly distributed) loader for training on ``device``: ``train=True`` shuffles and shards global
    batches of ``batch_size``; ``train=False`` shards the set for evaluation in per-rank batches of
    ``batch_size``. ``workers`` (image folders only) defaults to the CPU cores per process, at most 8. On a
    GPU, in-memory datasets move there (batches are made on the device) and image folders' batches come in
    pinned memory.
    """
    cuda = device is not None and device.type == "cuda"
    if cuda and isinstance(dataset, TensorImageDataset):
        dataset.to(device)
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 1) // world_size))
    return Loader(dataset, batch_size, shuffle=train, seed=seed, rank=rank, world_size=world_size,
                  workers=workers, pin_memory=cuda and not isinstance(dataset, TensorImageDataset))
