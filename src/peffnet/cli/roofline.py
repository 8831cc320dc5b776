"""``peffnet roofline``: each convolution against the device's measured compute and bandwidth ceilings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peffnet.cli.common import add_model_args, default_device, model_overrides
from peffnet.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "roofline", help="place every conv layer of models on the device's measured roofline (PNG/SVG)",
        description="Measure the device's peak compute (matmul) and memory bandwidth (vector add), then place "
                    "each convolution of each MODEL by its Appendix A (Eq. 7) arithmetic intensity, at the "
                    "MAC rate it achieves when run alone (or on the roof with --no-measure). Shows why grouped "
                    "(G16) spatial convolutions use a device better than depthwise (G1) ones.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="peffnet presets, timm:NAME or torchvision:NAME")
    p.add_argument("--resolution", type=int, help="input side in pixels (default: each model's native)")
    p.add_argument("--batch-size", type=int, default=8, help="batch B of Eq. 7 and of the layer timings (default 8)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--no-measure", action="store_true", help="skip the per-layer timings: points sit on the roof")
    p.add_argument("--out", type=Path, default=Path("roofline"), help="output folder (default ./roofline)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_model_args(p, with_model=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.measure.device import measure_device, resolve_device
    from peffnet.measure.roofline import plot_roofline, summarize, time_layers
    from peffnet.measure.subjects import build_model, parse_spec
    from peffnet.models.profile import conv_layers

    if args.batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {args.batch_size}")
    if args.resolution is not None and args.resolution < 32:
        raise ConfigError(f"resolution must be at least 32, got {args.resolution}")
    device = resolve_device(default_device(args.device))
    models = []
    for name in args.models:
        spec = parse_spec(name, model_overrides(args) if ":" not in name else {}, resolution=args.resolution)
        model, native, _ = build_model(spec)
        models.append((name, model, spec.resolution or native))
    peaks = measure_device(device)
    points: dict = {}
    for name, model, res in models:
        layers = conv_layers(model, res, args.batch_size, int(getattr(getattr(model, "cfg", None), "in_chans", 3)))
        rates = [None] * len(layers) if args.no_measure else time_layers(model, layers, args.batch_size, device)
        label = f"{name}@{res}"
        label += f" #{sum(k.startswith(label) for k in points) + 1}" if label in points else ""
        points[label] = list(zip(layers, rates, strict=True))
    peaks = peaks.max_with(measure_device(device))  # best of before and after: load only lowers them
    args.out.mkdir(parents=True, exist_ok=True)
    files = plot_roofline(peaks, points, args.out / "roofline",
                          title=f"roofline, batch {args.batch_size}, on {peaks.device}")
    rows = summarize(points, peaks)
    record = {"peaks": peaks.to_dict(), "batch_size": args.batch_size, "summary": rows,
              "layers": {label: [{**vars(layer), "achieved_macs_per_s": r} for layer, r in pts]
                         for label, pts in points.items()}}
    (args.out / "roofline.json").write_text(json.dumps(record, indent=1) + "\n")
    if args.json:
        print(json.dumps({"peaks": record["peaks"], "summary": rows}))
        return 0
    print(f"device {peaks.device}: peak {peaks.macs_per_s / 1e9:.1f} GMAC/s, bandwidth {peaks.bytes_per_s / 1e9:.1f}"
          f" GB/s, ridge {peaks.ridge:.1f} MACs/byte")
    print(f"  {'model':28s} {'layers':16s} {'n':>3s} {'MAC share':>9s} {'median AI':>9s} {'of peak':>8s}")
    for r in rows:
        frac = "" if r["median_fraction_of_peak"] is None else f"{100 * r['median_fraction_of_peak']:7.1f}%"
        print(f"  {r['model']:28s} {r['kind']:16s} {r['layers']:3d} {100 * r['mac_share']:8.1f}% "
              f"{r['median_intensity']:9.2f} {frac:>8s}")
    for f in [*files, args.out / "roofline.json"]:
        print(f)
    return 0
