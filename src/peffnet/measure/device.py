"""Device ceilings: measured compute peak and memory bandwidth (paper Section 2.2 and Appendix A).

A layer whose arithmetic intensity ``I`` (MACs per byte moved) is below ``peak / bandwidth`` cannot run
faster than ``I * bandwidth``: it is memory bound. Appendix A, Eq. 7 shows ``I`` grows with the group
size ``G``, so depthwise (G1) spatial convolutions sit far left of the ridge point while G16 ones move
towards it -- the hardware argument for G-EfficientNet (Section 3.1).

Both ceilings are *measured* on the device, never taken from a data sheet:

* peak compute: an ``n x n`` by ``n x n`` matmul (``n^3`` MACs), and the same product as 1x1 convolutions,
  the fastest of several timings;
* memory bandwidth: ``c = a + b`` over large vectors (reads 2, writes 1 vector), best of several timings.
"""


from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass

import torch

from peffnet.errors import ConfigError
from peffnet.measure.timing import best_time
from peffnet.runtime.device import device_name


@dataclass(frozen=True)
class DevicePeaks:
    """Measured ceilings of one device for one dtype."""

    device: str
    dtype: str
    macs_per_s: float  # matmul microbenchmark
    bytes_per_s: float  # vector add microbenchmark

    @property
    def ridge(self) -> float:
        """MACs per byte above which a kernel can be compute bound."""
        return self.macs_per_s / self.bytes_per_s

    def to_dict(self) -> dict:
        return {**asdict(self), "ridge_macs_per_byte": self.ridge}

    def max_with(self, other: DevicePeaks) -> DevicePeaks:
        """The higher of two measurements of each ceiling (on a shared machine, load only lowers them)."""
        return DevicePeaks(self.device, self.dtype, max(self.macs_per_s, other.macs_per_s),
                           max(self.bytes_per_s, other.bytes_per_s))


def measure_peak_macs(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None,
                      repeats: int = 5) -> float:
    """Multiply-accumulates per second of the fastest dense kernel in ``dtype`` (the device's practical compute
    peak): a square matmul, and the same product as a 1x1 convolution in NCHW and in channels_last. Libraries
    may run convolutions on other code than matmuls (on CPUs without bf16 instructions, oneDNN's bf16
    convolutions outrun the bf16 matmul several times), and a model's convolutions must not beat the peak they
    are compared with."""
    n = size or (8192 if device.type == "cuda" else _cpu_size(dtype))
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    rate = n**3 / best_time(lambda: torch.mm(a, b, out=c), device, repeats, inner=4)
    side = 32  # n channels in and out over max(1, n / side**2) images of side x side pixels: about n**3 MACs
    batch = max(1, n // side**2)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(batch, n, side, side, device=device).to(dtype).contiguous(memory_format=fmt)
        w = b.view(n, n, 1, 1).contiguous(memory_format=fmt)
        seconds = best_time(lambda: torch.nn.functional.conv2d(x, w), device, repeats, inner=4)  # noqa: B023
        rate = max(rate, batch * side * side * n * n / seconds)
    return rate


def _cpu_size(dtype: torch.dtype, largest: int = 1024, enough: float = 0.02) -> int:
    """The matmul side for a CPU peak: doubled from 256 while one product takes under ``enough`` seconds, up to
    ``largest`` (a dtype the CPU computes slowly is measured in about as much time as a fast one)."""
    n = 256
    while n < largest:
        a = torch.randn(n, n).to(dtype)
        start = time.perf_counter()
        torch.mm(a, a)
        if time.perf_counter() - start >= enough:
            break
        n *= 2
    return n


def measure_bandwidth(device: torch.device, numel: int | None = None, repeats: int = 5) -> float:
    """Bytes per second of ``c = a + b`` over float32 vectors far larger than any cache."""
    n = numel or (2**28 if device.type == "cuda" else 2**25)
    a = torch.full((n,), 0.5, device=device)  # the values do not matter; filling is 3x faster than rand on a CPU
    b = torch.full((n,), 0.25, device=device)
    c = torch.empty(n, device=device)
    return 3 * 4 * n / best_time(lambda: torch.add(a, b, out=c), device, repeats, inner=2)


PEAK_REPEATS = 5
"""Timings of each ceiling's kernel, at a benchmark's start and again at its end (fewer when the benchmark times
its models fewer times: :func:`peffnet.measure.bench.run_bench`)."""


def measure_device(device: torch.device, dtype: torch.dtype = torch.float32,
                   repeats: int = PEAK_REPEATS) -> DevicePeaks:
    """Both ceilings of ``device``; compute for ``dtype``, bandwidth in bytes (dtype independent): the best of
    ``repeats`` timings of each kernel. A benchmark measures at its start and at its end and keeps the higher
    of each (:meth:`DevicePeaks.max_with`: load only lowers a ceiling), the best of ten timings in all by default."""
    return DevicePeaks(str(device), str(dtype).removeprefix("torch."),
                       measure_peak_macs(device, dtype, repeats=repeats), measure_bandwidth(device, repeats=repeats))


def resolve_device(name: str) -> torch.device:
    """A torch device that exists here, or a ConfigError naming why not."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu or cuda[:N]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} is not available: torch sees no CUDA GPU on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} is not available: only {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; use cpu or cuda[:N]")
    return device


def environment(device: torch.device) -> dict:
    """Device and library versions, recorded with every result."""
    import timm
    import torchvision

    from peffnet.version import __version__

    return {"device": device.type, "device_name": device_name(device), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "peffnet": __version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}
