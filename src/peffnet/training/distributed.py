"""Device choice and data parallelism under ``torchrun`` (DDP: gloo on CPU, NCCL on CUDA).

``torchrun --nproc_per_node N -m peffnet train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
without them the run is a single process. Every rank holds the full model; the global batch is split
across ranks (and each rank's share into micro-batches), and DDP averages the gradients, so the update
equals the single-process one for the same global batch (paper Section 3.4: data-parallel replicas with
gradient accumulation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from peffnet.errors import ConfigError
from peffnet.settings import FLOAT, POSITIVE, TEXT, require

DEFAULT_TIMEOUT_S = 600.0
"""How long a process waits for the others (joining the group, any collective) before it fails: long enough for
a checkpoint write or a first ``torch.compile`` on the other ranks, far below gloo's default of 30 minutes, so
that a ``torchrun --max-restarts`` restart whose peer never comes back fails and is retried instead of hanging."""


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``; one CUDA device per local rank."""
    require("device", preference, TEXT, choices=("auto", "cpu", "cuda"))
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"local rank {local_rank} has no CUDA device (only {torch.cuda.device_count()})")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def setup(preference: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Context:
    """Join the process group torchrun describes (if any, once per process: later calls reuse it) and pick
    this rank's device. ``timeout_s`` bounds the wait for the other processes, when joining and in every
    collective. The command-line entry point leaves the group when the command ends (:func:`cleanup`)."""
    require("dist_timeout", timeout_s, FLOAT, POSITIVE)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s),
                                store=_restart_store(timeout_s), device_id=device if device.type == "cuda" else None)
    return Context(rank, world_size, local_rank, device)


def _restart_store(timeout_s: float) -> dist.Store | None:
    """The key-value store to join through under ``torchrun``, with keys of this worker-group restart only.

    torchrun's agent keeps one store for all restarts (``TORCHELASTIC_USE_AGENT_STORE``); without a prefix of
    its own, a restarted worker can read the address a dead peer published there and fail to connect (or wait
    for it). ``None``: the default (``env://``) rendezvous.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    return dist.PrefixStore(f"peffnet/restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def cleanup() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL.clear()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op for one process); returns it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_lists(items: list[str]) -> list[str]:
    """The concatenation of every rank's ``items`` (one process: ``items``)."""
    if not dist.is_initialized():
        return list(items)
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(items))
    return [x for part in gathered for x in (part or [])]


_CONTROL: list[Any] = []  # the host-side group of an NCCL run, made on first use


def _control_group() -> Any:
    """The group for small agreements between ranks (a stop signal): the process group itself under gloo; a
    gloo group beside NCCL's, so that agreeing on a host value never waits for the GPUs' queues."""
    if not _CONTROL:
        _CONTROL.append(dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else dist.group.WORLD)
    return _CONTROL[0]


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over all ranks (one scalar all-reduce on the host; ``value`` itself for one
    process): it never waits for a GPU."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_control_group())
    return int(tensor.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself for one process)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
