"""peffnet: EfficientNet made practically efficient (Masters et al., "Making EfficientNet More Efficient").

Group convolutions (G-EfficientNet), proxy-normalized activations and half-resolution training.
``create_model`` builds the plain reference network; ``fuse_proxy_norm`` and ``fold_proxy_norm`` are the
passes that make its proxy norm fast for CPU training and for inference (docs/architecture.md).
"""

from __future__ import annotations

import os
import sys
import time

SPIN_WHEN_IDLE = "3000"
"""``GOMP_SPINCOUNT`` of the command on a machine that is idle when it starts (benchmarks/bench_contention.py)."""


def _busy_cores(interval: float = 0.2) -> float | None:
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


def _choose_openmp_waiting() -> None:
    """How the command's OpenMP threads wait between parallel regions; set before torch loads OpenMP, and only
    where the user set neither ``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT``. Threads that spin make a run many
    times slower when another process wants the cores (libgomp's default spin: 20x beside one busy process);
    threads that sleep at once make small steps slower on an idle machine (1.4x). So: on a machine that other
    processes already keep busy, sleep at once (``PASSIVE``) and, unless ``OMP_NUM_THREADS`` says otherwise,
    use only the cores left idle; on an idle one, spin briefly."""
    if {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
        return
    busy = _busy_cores()
    if busy is None or busy >= 0.5:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        if busy is not None:
            os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) - round(busy))))
    else:
        os.environ["GOMP_SPINCOUNT"] = SPIN_WHEN_IDLE


if os.path.basename(sys.argv[0]) in ("peffnet", "-m"):  # launched as the command (`peffnet`, `python -m peffnet`)
    _choose_openmp_waiting()  # as a library, peffnet leaves the process's settings alone

from peffnet.errors import ConfigError  # noqa: E402
from peffnet.fusion import fold_proxy_norm, fuse_proxy_norm  # noqa: E402
from peffnet.layers.proxy_moments import proxy_norm_moments  # noqa: E402
from peffnet.models import EfficientNet, create_model, list_models  # noqa: E402
from peffnet.models.timm_compat import register as _register_timm  # noqa: E402
from peffnet.version import __version__  # noqa: E402

__all__ = ["ConfigError", "EfficientNet", "__version__", "create_model", "fold_proxy_norm", "fuse_proxy_norm",
           "list_models", "proxy_norm_moments"]

_register_timm()  # the presets as timm models: timm.create_model("peffnet_g16_efficientnet_b0", ...)
