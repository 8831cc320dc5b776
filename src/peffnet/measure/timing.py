"""Measuring primitives of the benchmarks (paper Sections 2.2, 4.4, 4.5): timing in alternation, the peak
memory of one step, and the largest batch that fits.

Timing: every closure is warmed up, then the closures are timed in *alternation* (the starting one rotates
each round), so load that drifts over the run affects all of them alike; callers take medians over rounds.

Peak memory of a step is the largest transient allocation during it: from CUDA's allocator statistics, or
on CPU from the allocation events ``torch.profiler`` records (what tensors hold, not process RSS).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import torch
from tqdm import tqdm

from peffnet.errors import ConfigError

GIB = 2**30


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock timings cover the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int, inner: int = 1) -> float:
    """Fastest of ``repeats`` timings of ``inner`` calls of ``fn``, per call, after one warm-up call."""
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def _time_block(step: Callable[[], None], iters: int, device: torch.device,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per call over ``iters`` back-to-back calls of ``step`` (queued GPU work included)."""
    synchronize(device)
    start = clock()
    for _ in range(iters):
        step()
    synchronize(device)
    return (clock() - start) / iters


def steady_clock(device: torch.device) -> tuple[str, Callable[[], float]]:
    """The clock that measures work rather than waiting: the process's CPU time on a CPU running one
    intra-op thread (time spent waiting for a core that another process holds does not count), else wall
    time (a GPU, or several threads whose CPU times add up)."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return "process CPU time (1 thread)", time.process_time
    return "wall time", time.perf_counter


def alternate(steps: list[Callable[[], None]], warmup: int, repeats: int, iters: int, device: torch.device,
              desc: str = "", clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """Seconds per step of each closure: warm-up, then ``repeats`` rounds in rotating order, each timed with
    ``clock``."""
    for step in steps:
        for _ in range(warmup):
            step()
    samples: list[list[float]] = [[] for _ in steps]
    for r in tqdm(range(repeats), desc=desc, disable=None, leave=False):
        for k in range(len(steps)):
            i = (r + k) % len(steps)
            samples[i].append(_time_block(steps[i], iters, device, clock))
    return samples


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


def nbytes(tensors: Iterable[object]) -> int:
    """Bytes held by the tensors among ``tensors``."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def memory_cap(cap_gib: float | None = None) -> float:
    """CPU memory budget in bytes: ``cap_gib`` (``--memory-cap``) or min(4 GiB, 25 % of physical memory)."""
    if cap_gib is not None:
        return cap_gib * GIB
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(4 * GIB, 0.25 * total)


def max_batch(fits: Callable[[int], bool], limit: int = 4096) -> int:
    """Largest batch in ``[1, limit]`` with ``fits(batch)``: double until it fails, then bisect."""
    if not fits(1):
        raise ConfigError("even batch size 1 does not fit in memory")
    lo, hi = 1, None
    while lo < limit:
        b = min(2 * lo, limit)
        if not fits(b):
            hi = b
            break
        lo = b
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
