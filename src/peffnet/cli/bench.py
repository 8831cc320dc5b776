"""``peffnet bench``: training/inference throughput, latency, memory and MAC utilization, side by side."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from peffnet.cli.common import add_model_args, batch_size_or_max, default_device, model_overrides
from peffnet.errors import ConfigError
from peffnet.measure.bench import MODES, BenchOptions, run_bench
from peffnet.measure.subjects import parse_spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure training/inference speed, latency and memory of models side by side",
        description="Measure models in alternation in one process (warm-up, repeats, medians; ratios are "
                    "against the first model). MODEL: a peffnet preset, timm:NAME or torchvision:NAME "
                    "(random init, nothing downloaded); NAME@R sets that model's resolution. With none of "
                    "--train/--infer/--latency, all three are measured.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="models to compare; the first is the reference")
    p.add_argument("--train", action="store_true", help="training img/s (forward + backward + RMSprop step)")
    p.add_argument("--infer", action="store_true", help="inference img/s")
    p.add_argument("--latency", action="store_true", help="batch-1 latency, median and p90")
    p.add_argument("--batch-size", default="32", help="batch for --train/--infer, or 'max': the largest that "
                   "fits (CUDA: tried; CPU: predicted against --memory-cap) (default 32)")
    p.add_argument("--resolution", type=int, help="input side in pixels (default: each model's native)")
    p.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA with a grad scaler, bfloat16 on CPU)")
    p.add_argument("--amp-dtype", choices=("float16", "bfloat16"), help="override the autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and input")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (slow to warm up on CPU)")
    p.add_argument("--fold-pn", action="store_true",
                   help="fold proxy norm into constants and adjacent layers (peffnet models; --infer/--latency only)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model before timing (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds over all models (default 5)")
    p.add_argument("--iters", type=int, default=2, help="steps per model per round (default 2)")
    p.add_argument("--latency-iters", type=int, default=10, help="batch-1 calls per model per round (default 10)")
    p.add_argument("--memory-cap", type=float, metavar="GIB",
                   help="CPU memory budget for --batch-size max and batch checks (default min(4, 25%% of RAM))")
    p.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's, one per core)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier width of every model (default 1000)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--out", type=Path, help="also write the JSON result to this file")
    add_model_args(p, with_model=False)
    p.set_defaults(func=run)
    _DEFAULTS.update({a.dest: a.default for a in p._actions})


_DEFAULTS: dict[str, object] = {}


def command_line(args: argparse.Namespace) -> str:
    """The equivalent ``peffnet bench`` command (options that differ from the defaults), for the record."""
    parts = ["peffnet", "bench", *args.models]
    for key, value in vars(args).items():
        if key in ("models", "func", "command") or value is None or value is False or _DEFAULTS.get(key) == value:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Validate the shared options (one-line errors) and build :class:`BenchOptions`."""
    modes = tuple(m for m in MODES if getattr(args, m)) or (("infer", "latency") if args.fold_pn else MODES)
    return BenchOptions(modes=modes, batch_size=batch_size_or_max(args.batch_size), device=default_device(args.device),
                        amp=args.amp, amp_dtype=args.amp_dtype, warmup=args.warmup, repeats=args.repeats,
                        iters=args.iters, latency_iters=args.latency_iters, memory_cap_gib=args.memory_cap,
                        num_classes=args.num_classes)


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.resolution is not None and args.resolution < 32:
        raise ConfigError(f"resolution must be at least 32, got {args.resolution}")
    specs = [parse_spec(m, model_overrides(args) if ":" not in m else {}, resolution=args.resolution,
                        channels_last=args.channels_last, compile=args.compile, fold_pn=args.fold_pn)
             for m in args.models]
    result = run_bench(specs, opts)
    result["command"] = command_line(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result) if args.json else format_result(result))
    return 0


def format_result(result: dict) -> str:
    """Human-readable tables: one per measured mode, plus the device line."""
    env, peaks = result["env"], result["peaks"]
    lines = [f"device: {env['device_name']}; torch {env['torch']}, torchvision {env['torchvision']}, "
             f"timm {env['timm']}",
             f"measured peak: {peaks['macs_per_s'] / 1e9:.1f} GMAC/s ({peaks['dtype']} matmul), "
             f"bandwidth {peaks['bytes_per_s'] / 1e9:.1f} GB/s"]
    rows = result["results"]
    width = max(len(r["label"]) for r in rows) + 2
    head = f"  {'model':{width}s} {'res':>4s} {'params':>7s} {'GMACs':>6s}"
    for mode, title in (("train", "training (forward + backward + optimizer step)"), ("infer", "inference")):
        if mode not in rows[0]:
            continue
        lines += ["", f"{title}, median of {result['options']['repeats']} rounds",
                  head + f" {'batch':>5s} {'img/s':>8s} {'ratio':>6s} {'peak MiB':>9s} {'MAC util':>8s}"]
        for r in rows:
            m = r[mode]
            lines.append(f"  {r['label']:{width}s} {r['resolution']:4d} {r['params'] / 1e6:6.2f}M "
                         f"{r['macs'] / 1e9:6.3f} {m['batch_size']:5d} {m['img_per_s']:8.1f} {m['ratio']:5.2f}x "
                         f"{m['peak_memory_bytes'] / 2**20:9.0f} {100 * m['mac_utilization']:7.1f}%")
    if "latency" in rows[0]:
        lines += ["", "latency at batch 1", head + f" {'median ms':>9s} {'p90 ms':>7s} {'speed':>6s}"]
        for r in rows:
            m = r["latency"]
            lines.append(f"  {r['label']:{width}s} {r['resolution']:4d} {r['params'] / 1e6:6.2f}M "
                         f"{r['macs'] / 1e9:6.3f} {m['median_ms']:9.2f} {m['p90_ms']:7.2f} {m['ratio']:5.2f}x")
    return "\n".join(lines)
