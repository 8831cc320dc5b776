"""``peffnet roofline``: each convolution against the device's measured compute and bandwidth ceilings."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from peffnet.files import write_file
from peffnet.models import ModelOverrides
from peffnet.resolution import RESOLUTION
from peffnet.settings import BOOL, INT, POSITIVE, TEXTS, setting


@dataclass
class RooflineCommand(ModelOverrides):
    models: list[str] | None = setting(None, "peffnet presets, timm:NAME or torchvision:NAME", TEXTS,
                                       positional=True, required=True, metavar="MODEL")
    resolution: int | None = setting(None, "input side in pixels (default: each model's native)", INT, RESOLUTION)
    batch_size: int = setting(8, "batch B of Eq. 7 and of the layer timings", INT, POSITIVE)
    device: str | None = setting(None, "cpu or cuda[:N] (default: cuda when available)")
    measure: bool = setting(True, "time every layer (--no-measure: points sit on the roof)", BOOL)
    out: str = setting("roofline", "output folder")
    json: bool = setting(False, "print the summary as JSON", BOOL)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "roofline", help="place every conv layer of models on the device's measured roofline (PNG/SVG)",
        description="Measure the device's peak compute (matmul) and memory bandwidth (vector add), then place "
                    "each convolution of each MODEL by its Appendix A (Eq. 7) arithmetic intensity, at the "
                    "MAC rate it achieves when run alone (or on the roof with --no-measure). Shows why grouped "
                    "(G16) spatial convolutions use a device better than depthwise (G1) ones.")
    RooflineCommand.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.measure.device import measure_device, resolve_device
    from peffnet.measure.roofline import plot_roofline, summarize, time_layers
    from peffnet.measure.subjects import build_model, parse_spec
    from peffnet.models.profile import conv_layers

    c = RooflineCommand.from_args(args)
    device = resolve_device(c.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(c.out)
    models = []
    for name in c.models:
        spec = parse_spec(name, c.overrides() if ":" not in name else {}, resolution=c.resolution)
        model, native, _ = build_model(spec)
        models.append((name, model, spec.resolution or native))
    peaks = measure_device(device)
    points: dict = {}
    spreads: dict = {}
    for name, model, res in models:
        layers = conv_layers(model, res, c.batch_size, int(getattr(getattr(model, "cfg", None), "in_chans", 3)))
        timed = time_layers(model, layers, c.batch_size, device) if c.measure else [None] * len(layers)
        label = f"{name}@{res}"
        label += f" #{sum(k.startswith(label) for k in points) + 1}" if label in points else ""
        points[label] = [(layer, t[0] if t else None) for layer, t in zip(layers, timed, strict=True)]
        spreads[label] = [t[1:] if t else None for t in timed]
    peaks = peaks.max_with(measure_device(device))  # best of before and after: load only lowers them
    out.mkdir(parents=True, exist_ok=True)
    files = plot_roofline(peaks, points, out / "roofline",
                          title=f"roofline, batch {c.batch_size}, on {peaks.device}")
    rows = summarize(points, peaks, spreads=spreads)
    record = {"peaks": peaks.to_dict(), "batch_size": c.batch_size, "summary": rows,
              "layers": {label: [{**vars(layer), "achieved_macs_per_s": r, "achieved_quartiles": q}
                                 for (layer, r), q in zip(pts, spreads[label], strict=True)]
                         for label, pts in points.items()}}
    write_file(out / "roofline.json", json.dumps(record, indent=1) + "\n")
    if c.json:
        print(json.dumps({"peaks": record["peaks"], "summary": rows}))
        return 0
    print(f"device {peaks.device}: peak {peaks.macs_per_s / 1e9:.1f} GMAC/s, bandwidth {peaks.bytes_per_s / 1e9:.1f}"
          f" GB/s, ridge {peaks.ridge:.1f} MACs/byte")
    print(f"  {'model':28s} {'layers':16s} {'n':>3s} {'MAC share':>9s} {'median AI':>9s} {'of peak':>8s} "
          f"{'(quartiles over rounds)':>22s}")
    for r in rows:
        frac = "" if r["median_fraction_of_peak"] is None else f"{100 * r['median_fraction_of_peak']:7.1f}%"
        q = r["fraction_of_peak_quartiles"]
        spread = f"({100 * q[0]:.1f}-{100 * q[1]:.1f} %)" if q else ""
        print(f"  {r['model']:28s} {r['kind']:16s} {r['layers']:3d} {100 * r['mac_share']:8.1f}% "
              f"{r['median_intensity']:9.2f} {frac:>8s} {spread:>22s}")
    if any(r["median_fraction_of_peak"] and r["median_fraction_of_peak"] > 1 for r in rows):
        print("  note: some layers ran above the measured peak: the machine was busier while the peak was measured")
    for f in [*files, out / "roofline.json"]:
        print(f)
    return 0
