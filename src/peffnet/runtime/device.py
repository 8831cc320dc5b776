"""The device a run or benchmark uses: its name, waiting for its queued work, and peak memory.

Two peak-memory measures, for two questions: :func:`peak_memory_bytes` is a whole run's peak since
:func:`reset_peak_memory` (CUDA's allocator peak, or the process's peak resident set on a CPU), what a run's
``summary.json`` reports; :func:`peak_transient_bytes` is the largest allocation beyond what was allocated
before one step (CUDA's allocator statistics, or on a CPU the allocation events ``torch.profiler`` records:
what tensors hold, not the process's RSS), what the benchmarks report.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """Human-readable device: the GPU's name, or the CPU model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    threads = torch.get_num_threads()
    return f"{model} ({threads} thread{'s' if threads != 1 else ''})"


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock timings cover the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (so each stage of a pipeline reports its own peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak resident set size (VmHWM) to the current one
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated, or on the CPU the process's peak resident set size, since the last
    :func:`reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop log lines (file descriptor 2) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_transient_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Largest number of bytes allocated during ``step()`` beyond what was allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


CUDA_CHANNELS_LAST = {"bn": True, "gn": False, "ln": True, "lnpn": True, "gnpn": False}
"""The memory layout each normalization's models train fastest in on CUDA, by what the kernels do: cuDNN runs the
convolutions and batch norm natively in channels_last; ``F.group_norm`` on CUDA copies a channels_last input to
NCHW and back (two copies per norm per pass), while LayerNorm (one group) runs on the NHWC tensor directly
(:func:`peffnet.layers.norm_act.group_norm`). ``scripts/device_check.py`` times both layouts of every model on
each GPU it is given and fails when this table is not the faster choice."""


def prefers_channels_last(norm: str, device: torch.device) -> bool:
    """Whether models with normalization ``norm`` train in channels_last by default on ``device`` (CUDA:
    :data:`CUDA_CHANNELS_LAST`; a CPU: NCHW)."""
    return device.type == "cuda" and CUDA_CHANNELS_LAST.get(norm, False)
