"""The entry point of the ``peffnet`` command: it chooses how the command's OpenMP threads wait, then runs
:func:`peffnet.cli.main`.

The OpenMP runtime that torch loads reads ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` and ``OMP_NUM_THREADS``
once, as it loads, i.e. during ``import torch``; importing the ``peffnet`` package loads torch. So the choice
lives here, outside the package, and is made before anything imports it. ``python -m peffnet`` cannot run
code before Python imports the package: its ``__main__`` makes the same choice and starts the process again
with it (docs/training.md, "Shared CPUs: chosen for you"). Importing the library chooses nothing.
"""

import os
import time
from collections.abc import MutableMapping

SPIN_WHEN_IDLE = "3000"
"""``GOMP_SPINCOUNT`` of the command on a machine that is idle when it starts (benchmarks/bench_contention.py)."""

OPENMP_WAITING = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""The variables that say how OpenMP threads wait; the command chooses only where the user set neither."""


def busy_cores(interval: float = 0.2) -> float | None:
    """Cores other processes kept busy over ``interval`` seconds (``/proc/stat``; ``None`` where unreadable)."""
    def busy_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # all but idle and iowait

    try:
        busy0, total0 = busy_total()
        time.sleep(interval)
        busy1, total1 = busy_total()
    except (OSError, ValueError):
        return None
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def openmp_waiting(busy: float | None, cores: int) -> dict[str, str]:
    """The OpenMP settings for a machine where other processes keep ``busy`` of its ``cores`` busy (``None``:
    unknown). Threads that spin make a run many times slower when another process wants the cores (libgomp's
    default spin: 20x beside one busy process); threads that sleep at once make small steps slower on an idle
    machine (1.4x). So: on a machine that other processes already keep busy, sleep at once (``PASSIVE``) and
    use only the cores left idle; on an idle one, spin briefly."""
    if busy is None:
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    if busy >= 0.5:
        return {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(max(1, cores - round(busy)))}
    return {"GOMP_SPINCOUNT": SPIN_WHEN_IDLE}


def choose_openmp_waiting(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set :func:`openmp_waiting` for this machine, now, in ``environ``, unless the user set
    ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``; an ``OMP_NUM_THREADS`` of the user's stays. Returns what it
    set. Takes effect only in a process that has not loaded torch yet."""
    if set(OPENMP_WAITING) & set(environ):
        return {}
    chosen = {k: v for k, v in openmp_waiting(busy_cores(), os.cpu_count() or 1).items() if k not in environ}
    environ.update(chosen)
    return chosen


def main() -> int:
    """The console script: choose, then load torch (through :mod:`peffnet.cli`) and run the command."""
    choose_openmp_waiting()
    from peffnet.cli import main as run_command

    return run_command()
