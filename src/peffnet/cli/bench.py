"""``peffnet bench``: training/inference throughput, latency, memory and MAC utilization, side by side."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

from peffnet.files import write_file
from peffnet.measure.bench import BenchOptions
from peffnet.models import ModelOverrides
from peffnet.resolution import RESOLUTION
from peffnet.settings import BOOL, INT, POSITIVE, TEXTS, setting


@dataclass
class BenchCommand(BenchOptions, ModelOverrides):
    """``peffnet bench``'s settings: the measuring options plus the models and what applies to each."""

    models: list[str] | None = setting(None, "models to compare; the first is the reference", TEXTS,
                                       positional=True, required=True, metavar="MODEL")
    resolution: int | None = setting(None, "input side in pixels (default: each model's native)", INT, RESOLUTION,
                                     group="models")
    channels_last: bool = setting(False, "NHWC memory format for model and input", BOOL, group="models")
    compile: bool = setting(False, "torch.compile the models (slow to warm up on CPU)", BOOL, group="models")
    fold_pn: bool = setting(False, "fold proxy norm for inference (peffnet models; inference and latency only)",
                            BOOL, group="models")
    threads: int | None = setting(None, "CPU intra-op threads (default: torch's, one per core)", INT, POSITIVE)
    json: bool = setting(False, "print one JSON object instead of tables", BOOL)
    out: str | None = setting(None, "also write the JSON result to this file")

    @property
    def modes(self) -> tuple[str, ...]:
        """As :attr:`BenchOptions.modes`, but folded models default to inference and latency."""
        chosen = tuple(m for m in ("train", "infer", "latency") if getattr(self, m))
        return chosen or (("infer", "latency") if self.fold_pn else super().modes)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure training/inference speed, latency and memory of models side by side",
        description="Measure models in alternation in one process (warm-up, repeats, medians; ratios are "
                    "against the first model). MODEL: a peffnet preset, timm:NAME or torchvision:NAME "
                    "(random init, nothing downloaded); NAME@R sets that model's resolution. With none of "
                    "--train/--infer/--latency, all three are measured.")
    BenchCommand.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.measure.bench import run_bench
    from peffnet.measure.subjects import parse_spec

    cfg = BenchCommand.from_args(args)
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    specs = [parse_spec(m, cfg.overrides() if ":" not in m else {}, resolution=cfg.resolution,
                        channels_last=cfg.channels_last, compile=cfg.compile, fold_pn=cfg.fold_pn)
             for m in cfg.models]
    result = run_bench(specs, cfg)
    result["command"] = cfg.recorded_in(os.path.dirname(cfg.out) or ".").command_line("bench")
    if cfg.out:
        write_file(cfg.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result) if cfg.json else format_result(result))
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
    disagree = []
    for mode, title in (("train", "training (forward + backward + optimizer step)"), ("infer", "inference")):
        if mode not in rows[0]:
            continue
        lines += ["", f"{title}, median of {result['options']['repeats']} rounds; ratio: median of the per-round "
                      f"ratios to the first model (quartiles)",
                  head + f" {'batch':>5s} {'img/s':>8s} {'ratio':>19s} {'peak MiB':>9s} {'MAC util':>8s}"]
        for r in rows:
            m = r[mode]
            q1, q3 = m["ratio_iqr"]
            of_medians = m["img_per_s"] / rows[0][mode]["img_per_s"]
            if abs(of_medians - m["ratio"]) > 0.1 * of_medians:
                disagree.append(f"{r['label']} {mode} {m['ratio']:.2f}x per round vs {of_medians:.2f}x of medians")
            ratio = f"{m['ratio']:5.2f}x ({q1:.2f}-{q3:.2f})"
            lines.append(f"  {r['label']:{width}s} {r['resolution']:4d} {r['params'] / 1e6:6.2f}M "
                         f"{r['macs'] / 1e9:6.3f} {m['batch_size']:5d} {m['img_per_s']:8.1f} {ratio:>19s} "
                         f"{m['peak_memory_bytes'] / 2**20:9.0f} {100 * m['mac_utilization']:7.1f}%")
    if "latency" in rows[0]:
        lines += ["", "latency at batch 1", head + f" {'median ms':>9s} {'p90 ms':>7s} {'speed':>6s}"]
        for r in rows:
            m = r["latency"]
            lines.append(f"  {r['label']:{width}s} {r['resolution']:4d} {r['params'] / 1e6:6.2f}M "
                         f"{r['macs'] / 1e9:6.3f} {m['median_ms']:9.2f} {m['p90_ms']:7.2f} {m['ratio']:5.2f}x")
    if disagree:
        lines += ["", "note: the machine's load varied during the run: the median of per-round ratios and the ratio "
                      "of median img/s disagree by more than 10 % (" + "; ".join(disagree) + "). Trust the per-round "
                      "ratio and its quartiles; rerun with more --repeats or on a quieter machine for steady img/s."]
    return "\n".join(lines)
