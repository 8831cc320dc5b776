"""Measuring primitives of the benchmarks (paper Sections 2.2, 4.4, 4.5): timing in alternation and the largest
batch that fits (a step's peak memory: :func:`peffnet.runtime.device.peak_transient_bytes`).

Timing: every closure is warmed up, then the closures are timed in *alternation* (the starting one rotates
each round), so load that drifts over the run affects all of them alike; callers take medians over rounds.
When closures compete (the settings of one stage, of which only the fastest will run), the clearly slower ones
are dropped as soon as that is clear, instead of being timed in full.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm

from peffnet.errors import ConfigError
from peffnet.runtime.device import synchronize

GIB = 2**30


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
              desc: str = "", clock: Callable[[], float] = time.perf_counter, progress: bool | None = None,
              race: list[object] | None = None) -> list[list[float]]:
    """Seconds per step of each closure: warm-up, then ``repeats`` rounds in rotating order, each timed with
    ``clock``; a progress bar counts the calls (``progress``: ``None`` shows it on a terminal only).

    ``race`` gives each closure a group key: the closures of a group compete (the layouts and precisions of one
    stage, say) and only the fastest matters, so a closure stops being timed as soon as it is clearly slower
    than the best of its group: its warm-up call took over :data:`RACE_WARMUP` times the group's fastest
    warm-up call, or after a round its median is over ``1 + RACE_MARGIN / sqrt(rounds)`` times the group's best
    median (a margin that narrows as the evidence grows). A dropped closure keeps the samples it has.
    """
    n = len(steps)
    alive = [True] * n
    samples: list[list[float]] = [[] for _ in steps]
    total = n * (warmup + repeats)
    with tqdm(total=total, desc=desc, disable=None if progress is None else not progress, leave=False,
              unit="call", dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 10) as bar:
        first: list[float] = [float("inf")] * n
        for i, step in enumerate(steps):
            for w in range(warmup):
                if race is not None and w == 0:
                    first[i] = _time_block(step, 1, device, clock)
                    best = min(t for k, t in enumerate(first) if race[k] == race[i])
                    if first[i] > RACE_WARMUP * best:
                        alive[i] = False
                        bar.update(warmup + repeats)
                        break
                else:
                    step()
                bar.update()
            if race is not None and alive[i]:  # a faster closure warmed up later drops the ones before it
                for k in range(i):
                    if alive[k] and race[k] == race[i] and first[k] > RACE_WARMUP * first[i]:
                        alive[k] = False
                        bar.update(repeats)
        for r in range(repeats):
            for k in range(n):
                i = (r + k) % n
                if alive[i]:
                    samples[i].append(_time_block(steps[i], iters, device, clock))
                    bar.update()
            if race is not None:
                for _ in _drop_slower(samples, alive, race, r + 1):
                    bar.update(repeats - r - 1)
    return samples


RACE_WARMUP = 3.0
"""A closure whose warm-up call took this many times its group's fastest one is not timed further."""
RACE_MARGIN = 0.5
"""After ``k`` rounds a closure is dropped when its median exceeds its group's best by ``RACE_MARGIN / sqrt(k)``."""


def _drop_slower(samples: list[list[float]], alive: list[bool], race: list[object], rounds: int) -> list[int]:
    """Mark dead the live closures whose median is clearly above the best median of their group; returns them."""
    medians = [statistics.median(s) if s else float("inf") for s in samples]
    limit = 1 + RACE_MARGIN / math.sqrt(rounds)
    dropped = []
    for i in range(len(samples)):
        group = [medians[k] for k in range(len(samples)) if race[k] == race[i] and samples[k]]
        if alive[i] and group and medians[i] > limit * min(group):
            alive[i] = False
            dropped.append(i)
    return dropped


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
