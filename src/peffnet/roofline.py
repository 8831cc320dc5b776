"""Device ceilings and the roofline view of a model's convolutions (paper Section 2.2 and Appendix A).

A layer whose arithmetic intensity ``I`` (MACs per byte moved) is below ``peak / bandwidth`` cannot run
faster than ``I * bandwidth``: it is memory bound. Appendix A, Eq. 7 shows ``I`` grows with the group
size ``G``, so depthwise (G1) spatial convolutions sit far left of the ridge point while G16 ones move
towards it -- the hardware argument for G-EfficientNet (Section 3.1).

Both ceilings are *measured* on the device, never taken from a data sheet:

* peak compute: an ``n x n`` by ``n x n`` matmul (``n^3`` MACs), best of several timings;
* memory bandwidth: ``c = a + b`` over large vectors (reads 2, writes 1 vector), best of several timings.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from peffnet.plotting import pyplot, save_figure
from peffnet.profile import LayerStat, arithmetic_intensity, profile_model


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


def measure_peak_macs(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None,
                      repeats: int = 5) -> float:
    """Multiply-accumulates per second of a square matmul (the device's practical compute peak)."""
    n = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    return n**3 / best_time(lambda: torch.mm(a, b, out=c), device, repeats, inner=4)


def measure_bandwidth(device: torch.device, numel: int | None = None, repeats: int = 5) -> float:
    """Bytes per second of ``c = a + b`` over float32 vectors far larger than any cache."""
    n = numel or (2**28 if device.type == "cuda" else 2**25)
    a = torch.rand(n, device=device)
    b = torch.rand(n, device=device)
    c = torch.empty(n, device=device)
    return 3 * 4 * n / best_time(lambda: torch.add(a, b, out=c), device, repeats, inner=2)


def measure_device(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 10) -> DevicePeaks:
    """Both ceilings of ``device``; compute for ``dtype``, bandwidth in bytes (dtype independent)."""
    return DevicePeaks(str(device), str(dtype).removeprefix("torch."),
                       measure_peak_macs(device, dtype, repeats=repeats), measure_bandwidth(device, repeats=repeats))


def conv_layers(model: nn.Module, resolution: int, batch_size: int = 1, in_chans: int = 3) -> list[LayerStat]:
    """Conv and linear layers of *any* model with their MACs per image and Eq. 7 intensity.

    Forward hooks on ``nn.Conv2d`` / ``nn.Linear``, the same count as :func:`peffnet.profile.profile_model`
    (MACs = output elements x input channels per group x k^2), traced on a meta-device copy.
    """
    try:
        meta = copy.deepcopy(model).to("meta")
        x = torch.empty(1, in_chans, resolution, resolution, device="meta")
    except (RuntimeError, NotImplementedError):  # pragma: no cover - models that refuse the meta device
        meta, x = copy.deepcopy(model).cpu(), torch.zeros(1, in_chans, resolution, resolution)
    layers: list[LayerStat] = []

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            if isinstance(mod, nn.Conv2d):
                k, s, gs, f = mod.kernel_size[0], mod.stride[0], mod.in_channels // mod.groups, inputs[0].shape[-1]
                macs = out[0].numel() * gs * mod.kernel_size[0] * mod.kernel_size[1]
                layers.append(LayerStat(name, "", "conv", mod.in_channels, mod.out_channels, k, s, gs, f, macs,
                                        params, arithmetic_intensity(gs, k, f, s, batch_size)))
            else:
                macs = out[0].numel() * mod.in_features
                layers.append(LayerStat(name, "", "linear", mod.in_features, mod.out_features, 1, 1,
                                        mod.in_features, 1, macs, params,
                                        arithmetic_intensity(mod.in_features, 1, 1, 1, batch_size)))

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in meta.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        meta.eval()
        with torch.no_grad():
            meta(x)
    finally:
        for h in handles:
            h.remove()
    return layers


def model_macs(model: nn.Module, resolution: int) -> int:
    """Forward MACs for one image: :func:`profile_model` for peffnet models, :func:`conv_layers` otherwise."""
    from peffnet.models import EfficientNet

    if isinstance(model, EfficientNet):
        return profile_model(model, resolution, in_chans=model.cfg.in_chans).macs
    return sum(layer.macs for layer in conv_layers(model, resolution))


def layer_kind(layer: LayerStat) -> str:
    """Which family a convolution belongs to, for colouring: stem, spatial (grouped kxk), 1x1, SE, linear."""
    if layer.kind == "linear":
        return "linear"
    if layer.field == 1:
        return "squeeze-excite"
    if layer.kernel == 1:
        return "pointwise 1x1"
    return "stem" if layer.group_size == layer.in_channels and layer.in_channels <= 4 else "spatial kxk"


def time_layers(model: nn.Module, layers: list[LayerStat], batch: int, device: torch.device,
                repeats: int = 5) -> list[float]:
    """Achieved MACs/s of each convolution of ``model`` run alone on random input (best of ``repeats``).

    Only the convolution is timed (not its norm or activation), at the input shape the layer sees
    inside the network, so each point sits against the roofline of exactly the op Eq. 7 describes.
    """
    rates = []
    with torch.inference_mode():
        for layer in layers:
            conv = model.get_submodule(layer.name).to(device).eval()
            if layer.kind == "linear":
                x = torch.randn(batch, layer.in_channels, device=device)
            else:
                x = torch.randn(batch, layer.in_channels, layer.field, layer.field, device=device)
            seconds = best_time(lambda conv=conv, x=x: conv(x), device, repeats)
            rates.append(layer.macs * batch / seconds)
    return rates


def plot_roofline(peaks: DevicePeaks, models: dict[str, list[tuple[LayerStat, float | None]]], path: Path,
                  bytes_per_element: int = 4, title: str = "") -> list[Path]:
    """Draw the roofline and one point per layer; writes ``path`` as PNG and SVG and returns both paths.

    ``models`` maps a label to ``(layer, measured MACs/s or None)``; a layer without a measurement is
    drawn on the roof (its attainable bound). x is Eq. 7's intensity divided by ``bytes_per_element``.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = [layer.intensity / bytes_per_element for pts in models.values() for layer, _ in pts]
    lo, hi = min(xs + [peaks.ridge]) / 2, max(xs + [peaks.ridge]) * 2
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(grid, [min(peaks.macs_per_s, x * peaks.bytes_per_s) / 1e9 for x in grid], "k-", lw=2,
            label=f"roof: {peaks.macs_per_s / 1e9:.0f} GMAC/s, {peaks.bytes_per_s / 1e9:.1f} GB/s")
    markers = {"spatial kxk": "o", "pointwise 1x1": "s", "squeeze-excite": "^", "stem": "D", "linear": "v"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, pts) in enumerate(models.items()):
        for kind, marker in markers.items():
            sel = [(layer, r) for layer, r in pts if layer_kind(layer) == kind]
            if not sel:
                continue
            x = [layer.intensity / bytes_per_element for layer, _ in sel]
            y = [(r if r is not None else min(peaks.macs_per_s, xi * peaks.bytes_per_s)) / 1e9
                 for (_, r), xi in zip(sel, x, strict=True)]
            ax.scatter(x, y, marker=marker, color=colors[i % len(colors)], alpha=0.7, s=28,
                       label=f"{label}: {kind}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs per byte; Appendix A Eq. 7)")
    ax.set_ylabel("GMAC/s")
    ax.set_title(title or f"roofline on {peaks.device} ({peaks.dtype})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def summarize(models: dict[str, list[tuple[LayerStat, float | None]]], peaks: DevicePeaks,
              bytes_per_element: int = 4) -> list[dict]:
    """Per model and layer family: layer count, MAC share, median intensity and achieved fraction of peak."""
    rows = []
    for label, pts in models.items():
        total = sum(layer.macs for layer, _ in pts) or 1
        for kind in ("stem", "spatial kxk", "pointwise 1x1", "squeeze-excite", "linear"):
            sel = [(layer, r) for layer, r in pts if layer_kind(layer) == kind]
            if not sel:
                continue
            measured = [r for _, r in sel if r is not None]
            rows.append({
                "model": label, "kind": kind, "layers": len(sel),
                "mac_share": sum(layer.macs for layer, _ in sel) / total,
                "median_intensity": statistics.median(layer.intensity / bytes_per_element for layer, _ in sel),
                "median_fraction_of_peak": statistics.median(measured) / peaks.macs_per_s if measured else None,
            })
    return rows
