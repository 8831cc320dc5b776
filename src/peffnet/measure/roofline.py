"""The roofline view of a model's convolutions (paper Section 2.2 and Appendix A).

A layer whose arithmetic intensity ``I`` (MACs per byte moved) is below ``peak / bandwidth`` cannot run
faster than ``I * bandwidth``: it is memory bound. Appendix A, Eq. 7 shows ``I`` grows with the group
size ``G``, so depthwise (G1) spatial convolutions sit far left of the ridge point while G16 ones move
towards it -- the hardware argument for G-EfficientNet (Section 3.1). The ceilings are measured
(:mod:`peffnet.measure.device`), never taken from a data sheet.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from torch import nn

from peffnet.measure.device import DevicePeaks
from peffnet.measure.plotting import pyplot, save_figure
from peffnet.measure.timing import alternate, best_time
from peffnet.models.profile import LayerStat


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
                repeats: int = 7, block_s: float = 2e-3) -> list[tuple[float, float, float]]:
    """Achieved MACs/s of each convolution of ``model`` run alone on random input: (median, first quartile,
    third quartile) over ``repeats`` rounds.

    Only the convolution is timed (not its norm or activation), at the input shape the layer sees
    inside the network, so each point sits against the roofline of exactly the op Eq. 7 describes. The
    layers are timed in alternation (:func:`peffnet.measure.timing.alternate`), each block of calls long
    enough (``block_s``) to be timed reliably, so load that comes and goes shifts every layer alike and the
    quartiles show how much it moved the figures.
    """
    steps, calls = [], []
    with torch.inference_mode():
        for layer in layers:
            conv = model.get_submodule(layer.name).to(device).eval()
            shape = (batch, layer.in_channels) if layer.kind == "linear" else (
                batch, layer.in_channels, layer.field, layer.field)
            x = torch.randn(*shape, device=device)
            once = best_time(lambda conv=conv, x=x: conv(x), device, 1)
            n = max(1, round(block_s / max(once, 1e-7)))

            def block(conv: nn.Module = conv, x: torch.Tensor = x, n: int = n) -> None:
                for _ in range(n):
                    conv(x)

            steps.append(block)
            calls.append(n)
        samples = alternate(steps, warmup=1, repeats=repeats, iters=1, device=device)
    rates = []
    for layer, n, secs in zip(layers, calls, samples, strict=True):
        r = sorted(layer.macs * batch * n / t for t in secs)
        q = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else [r[0]] * 3
        rates.append((statistics.median(r), q[0], q[2]))
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
              bytes_per_element: int = 4, spreads: dict[str, list[tuple[float, float] | None]] | None = None
              ) -> list[dict]:
    """Per model and layer family: layer count, MAC share, median intensity, the median over layers of each
    layer's median fraction of the peak and, with ``spreads`` (each layer's quartiles), the median over
    layers of the quartiles' fractions."""
    rows = []
    for label, pts in models.items():
        total = sum(layer.macs for layer, _ in pts) or 1
        for kind in ("stem", "spatial kxk", "pointwise 1x1", "squeeze-excite", "linear"):
            sel = [(layer, r) for layer, r in pts if layer_kind(layer) == kind]
            if not sel:
                continue
            measured = [r for _, r in sel if r is not None]
            quartiles = [q for (layer, _), q in zip(pts, (spreads or {}).get(label, [None] * len(pts)), strict=True)
                         if layer_kind(layer) == kind and q is not None]
            rows.append({
                "model": label, "kind": kind, "layers": len(sel),
                "mac_share": sum(layer.macs for layer, _ in sel) / total,
                "median_intensity": statistics.median(layer.intensity / bytes_per_element for layer, _ in sel),
                "median_fraction_of_peak": statistics.median(measured) / peaks.macs_per_s if measured else None,
                "fraction_of_peak_quartiles": [statistics.median(q[i] for q in quartiles) / peaks.macs_per_s
                                               for i in (0, 1)] if quartiles else None,
            })
    return rows
