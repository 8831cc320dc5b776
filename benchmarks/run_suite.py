"""The benchmark suite behind ``benchmarks/RESULTS.md`` (paper Sections 4.4-4.5; docs/reference.md, "Peers").

    python benchmarks/run_suite.py                # CPU: about 6 minutes on 2 cores
    python benchmarks/run_suite.py --device cuda  # GPU: AMP, larger batches, inference at the largest batch
    python benchmarks/run_suite.py --render       # only rebuild RESULTS.md from benchmarks/results/*.json
    python benchmarks/run_suite.py --device cuda --check --only ...   # GPU sizes in minutes (device_check.py)

Every comparison is one or two :func:`peffnet.measure.bench.run_bench` calls: its models are measured in
alternation in this one process after warm-up, and each figure is a median over rounds, so the
ratios are fair on a shared, noisy machine even when the absolute img/s drift. The result of each
device goes to ``benchmarks/results/<device>.json``; RESULTS.md shows every device's results side by side.

``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads OpenMP: on a CPU shared with other processes,
threads that spin while waiting for each other make timings erratic (docs/benchmarks.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from peffnet.errors import ConfigError  # noqa: E402
from peffnet.measure.bench import BenchOptions, environment, run_bench, set_utilization  # noqa: E402
from peffnet.measure.device import DevicePeaks, measure_device, resolve_device  # noqa: E402
from peffnet.measure.roofline import plot_roofline, summarize, time_layers  # noqa: E402
from peffnet.measure.subjects import BenchSpec  # noqa: E402
from peffnet.models.profile import conv_layers  # noqa: E402

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Settings:
    """Sizes of one device's suite: training at ``train_res``, inference and latency at ``infer_res``."""

    train_res: int
    train_batch: int | str
    infer_res: int
    infer_batch: int | str
    amp: bool = False
    repeats: int = 5
    iters: int = 2
    latency_iters: int = 5
    warmup: int = 2
    compile_train: bool = False  # CPU: compiling a training step takes minutes on 2 cores
    native_res: int = 224  # the half-vs-native comparison (paper Table 1, B0)
    half_res: int = 160
    roofline_batch: int = 8  # batch B of Eq. 7 and of the per-layer timings
    peak_repeats: int = 10  # timings per device-ceiling measurement (best one kept)


SETTINGS = {
    "cpu": Settings(train_res=128, train_batch=8, infer_res=224, infer_batch=8, repeats=10, iters=1,
                    latency_iters=3),
    "cuda": Settings(train_res=224, train_batch=128, infer_res=224, infer_batch="max", amp=True, repeats=7,
                     iters=10, latency_iters=20, warmup=5, compile_train=True, roofline_batch=64),
    "check": Settings(train_res=224, train_batch=128, infer_res=224, infer_batch=256, amp=True, repeats=5, iters=5,
                      latency_iters=10, warmup=3),  # scripts/device_check.py: fixed batches, minutes not hours
    "quick": Settings(train_res=32, train_batch=2, infer_res=32, infer_batch=2, repeats=1, iters=1,
                      latency_iters=1, warmup=1, native_res=64, half_res=32, roofline_batch=2,
                      peak_repeats=1),
}


@dataclass
class Comparison:
    """Models measured together; ``summary`` pairs (numerator, denominator) become headline ratios."""

    key: str
    title: str
    specs: list[BenchSpec]
    modes: tuple[str, ...] = ("train", "infer", "latency")
    summary: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""


def ours(label: str, name: str = "efficientnet_b0", **kw: object) -> BenchSpec:
    return BenchSpec(name, label=label, **kw)  # type: ignore[arg-type]


def comparisons(s: Settings) -> list[Comparison]:
    """The suite: peers, group size, normalization, resolution, memory format, compilation."""
    g16 = "g16_efficientnet_b0"
    return [
        Comparison("peers", "Ours (G1-BN B0) vs timm and torchvision EfficientNet-B0", [
            ours("ours G1-BN"), ours("timm", "timm:efficientnet_b0"),
            ours("torchvision", "torchvision:efficientnet_b0"),
        ], summary=[("ours G1-BN", "timm"), ("ours G1-BN", "torchvision")],
            note="All three randomly initialised with 1000 classes; timm and torchvision as created by default "
                 "(timm: no stochastic depth; torchvision and ours: 0.2)."),
        Comparison("group_size", "Group size: G16 (E4) vs G1 (E6), GN, B0", [
            ours("G1-GN", overrides={"norm": "gn"}), ours("G16-GN", g16, overrides={"norm": "gn"}),
        ], summary=[("G16-GN", "G1-GN")]),
        Comparison("norms", "Normalization of G16 B0: LN+PN vs GN vs BN", [
            ours("G16-GN", g16, overrides={"norm": "gn"}), ours("G16-BN", g16),
            ours("G16-LN+PN", g16, overrides={"norm": "lnpn"}),
            ours("G16-LN+PN folded", g16, overrides={"norm": "lnpn"}, fold_pn=True),
        ], modes=("train", "infer"),
            summary=[("G16-LN+PN", "G16-GN"), ("G16-LN+PN folded", "G16-GN"), ("G16-BN", "G16-GN")],
            note="LN+PN unfolded computes the proxy moments once per parameter change (cached in eval mode); "
                 "*folded* is after `peffnet.fold_proxy_norm` (inference only, so it has no training figures)."),
        Comparison("resolution", "Half vs native training resolution, G16-LN+PN B0", [
            ours("G16-LN+PN-Native", g16, overrides={"norm": "lnpn"}, resolution=s.native_res),
            ours("G16-LN+PN-Half", g16, overrides={"norm": "lnpn"}, resolution=s.half_res),
        ], modes=("train",), summary=[("G16-LN+PN-Half", "G16-LN+PN-Native")],
            note="Both at the same batch; half resolution (160 px) has about half the pixels of native (224 px)."),
        Comparison("channels_last", "Memory format: channels_last (NHWC) vs NCHW", [
            ours("G1-BN NCHW"), ours("G1-BN NHWC", channels_last=True),
            ours("G16-BN NCHW", g16), ours("G16-BN NHWC", g16, channels_last=True),
        ], modes=("train", "infer"), summary=[("G1-BN NHWC", "G1-BN NCHW"), ("G16-BN NHWC", "G16-BN NCHW")]),
        Comparison("compile", "torch.compile vs eager, G1-BN B0", [
            ours("G1-BN eager"), ours("G1-BN compiled", compile=True),
        ], modes=("train", "infer") if s.compile_train else ("infer",),
            summary=[("G1-BN compiled", "G1-BN eager")],
            note="" if s.compile_train else "Inference only: compiling a training step takes minutes on 2 CPU cores."),
    ]


def run_comparison(c: Comparison, s: Settings, device: str, peaks: DevicePeaks) -> list[dict]:
    """One bench run for training (at ``train_res``) and one for inference + latency (at ``infer_res``)."""
    runs = []
    base = BenchOptions(device=device, amp=s.amp, warmup=s.warmup, repeats=s.repeats, iters=s.iters,
                        latency_iters=s.latency_iters)
    for modes, res, batch in ((("train",), s.train_res, s.train_batch),
                              (("infer", "latency"), s.infer_res, s.infer_batch)):
        wanted = tuple(m for m in modes if m in c.modes)
        if not wanted:
            continue
        specs = [replace(sp, resolution=sp.resolution or res) for sp in c.specs
                 if not (sp.fold_pn and "train" in wanted)]
        opts = replace(base, batch_size=batch).only(*wanted)
        print(f"[{c.key}] {', '.join(wanted)}: {', '.join(sp.label for sp in specs)}", file=sys.stderr, flush=True)
        runs.append(run_bench(specs, opts, peaks=peaks))
    return runs


def run_roofline(s: Settings, device: torch.device, path: Path, fp32_peaks: DevicePeaks | None) -> dict:
    """G1 vs G16 B0 on the float32 roofline (Appendix A): plot next to the results, summary into them.

    The ceilings are the best of ``fp32_peaks`` (the suite's so far) and measurements before and after.
    """
    from peffnet.models import create_model

    res = s.infer_res
    peaks = measure_device(device, repeats=s.peak_repeats)
    peaks = peaks.max_with(fp32_peaks) if fp32_peaks is not None else peaks
    points = {}
    for name in ("efficientnet_b0", "g16_efficientnet_b0"):
        print(f"[roofline] {name}@{res}, batch {s.roofline_batch}", file=sys.stderr, flush=True)
        model = create_model(name)
        layers = conv_layers(model, res, s.roofline_batch)
        timed = time_layers(model, layers, s.roofline_batch, device)
        points[f"{name}@{res}"] = [(layer, t[0]) for layer, t in zip(layers, timed, strict=True)]
    peaks = peaks.max_with(measure_device(device, repeats=s.peak_repeats))  # load only lowers them
    files = plot_roofline(peaks, points, path, title=f"G1 vs G16 B0, batch {s.roofline_batch}, {device}")
    return {"batch_size": s.roofline_batch, "resolution": res, "peaks": peaks.to_dict(),
            "summary": summarize(points, peaks), "files": [f.name for f in files]}


def merge(old: dict, new: dict, roofline: dict | None) -> dict:
    """``old`` with the comparisons (and roofline) of the partial run ``new`` replaced; peaks: the higher."""
    done = {c["key"]: c for c in new["comparisons"]}
    merged = dict(old, env=new["env"], settings=new["settings"])
    merged["comparisons"] = [done.pop(c["key"], c) for c in old["comparisons"]] + list(done.values())
    for key in ("macs_per_s", "bytes_per_s"):
        merged["peaks"] = dict(merged["peaks"], **{key: max(old["peaks"][key], new["peaks"][key])})
    if roofline is not None:
        merged["roofline"] = roofline
    return merged


def device_key(env: dict) -> str:
    """File name of a device's results, e.g. ``cpu-amd-epyc`` or ``cuda-nvidia-h100-80gb-hbm3``."""
    name = re.sub(r"\(.*?\)", "", env["device_name"]).strip().lower()
    return f"{env['device']}-{re.sub(r'[^a-z0-9]+', '-', name).strip('-')}"


def _entry(run: dict, label: str, mode: str) -> dict | None:
    row = next((r for r in run["results"] if r["label"] == label), None)
    return row[mode] if row and mode in row else None


def headline(comp: dict, num: str, den: str, mode: str) -> tuple[float, tuple[float, float] | None] | None:
    """``num`` over ``den`` for ``mode`` and, when one of them is the run's first model, the interquartile
    range of the per-round ratios; otherwise a quotient of the two ratios against the first model."""
    for run in comp["runs"]:
        a, b = _entry(run, num, mode), _entry(run, den, mode)
        if a is None or b is None:
            continue
        first = run["results"][0]["label"]
        if den == first:
            return a["ratio"], tuple(a["ratio_iqr"])
        if num == first:
            return 1 / b["ratio"], (1 / b["ratio_iqr"][1], 1 / b["ratio_iqr"][0])
        return a["ratio"] / b["ratio"], None
    return None


def device_title(res: dict) -> str:
    env = res["env"]
    return f"{env['device'].upper()}: {env['device_name']}"


def _cells(row: dict, mode: str) -> list[str]:
    m = row.get(mode)
    if m is None:
        return [""] * (6 if mode != "latency" else 2)
    if mode == "latency":
        return [f"{m['median_ms']:.1f} / {m['p90_ms']:.1f}", f"{m['ratio']:.2f}x"]
    return [f"{row['resolution']} / {m['batch_size']}", f"{row['macs'] / 1e9:.3f}", f"{m['img_per_s']:.1f}",
            f"{m['ratio']:.2f}x", f"{m['peak_memory_bytes'] / 2**20:.0f}", f"{100 * m['mac_utilization']:.1f} %"]


def comparison_table(comp: dict) -> list[str]:
    """One markdown table: a row per model, training / inference / latency columns as measured."""
    modes = [m for m in ("train", "infer", "latency") if any(m in r for run in comp["runs"] for r in run["results"])]
    heads = {"train": ["train res / batch", "GMACs", "train img/s", "ratio", "peak MiB", "MAC util"],
             "infer": ["infer res / batch", "GMACs", "infer img/s", "ratio", "peak MiB", "MAC util"],
             "latency": ["batch-1 latency ms (median / p90)", "speed"]}
    cols = ["model", "params", *[h for m in modes for h in heads[m]]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    labels = list(dict.fromkeys(r["label"] for run in comp["runs"] for r in run["results"]))
    for label in labels:
        rows = {m: r for run in comp["runs"] for r in run["results"] if r["label"] == label for m in modes if m in r}
        first = next(iter(rows.values()))
        cells = [label, f"{first['params'] / 1e6:.2f}M"]
        for m in modes:
            cells += _cells(rows.get(m, {}), m)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(results: list[dict]) -> str:
    """RESULTS.md: headline ratios of every device side by side, then each comparison's tables."""
    out = ["# Benchmark results", "",
           "Generated by `python benchmarks/run_suite.py` from `benchmarks/results/*.json` (one file per device; "
           "see docs/benchmarks.md). Do not edit by hand. Models of one table are measured in alternation in one "
           "process; *ratio* is the median over rounds of each model's img/s over the table's first model "
           "(higher is faster), so it is fair even when the machine's load drifts. GMACs per image at that "
           "resolution; training MAC utilization counts 3x the forward MACs (forward + backward) against the "
           "measured matmul peak.", ""]
    mode_name = {"train": "training", "infer": "inference", "latency": "batch-1 latency"}
    out += ["## Headline ratios (higher = faster)", "",
            "In brackets: the interquartile range of the per-round ratios, a measure of the noise.", "",
            "| comparison | " + " | ".join(device_title(r) for r in results) + " |",
            "|---|" + "---|" * len(results)]
    keys: dict[tuple[str, str, str, str], str] = {}
    for res in results:
        for comp in res["comparisons"]:
            for num, den in comp["summary"]:
                for mode in ("train", "infer", "latency"):
                    if headline(comp, num, den, mode) is not None:
                        keys.setdefault((comp["key"], num, den, mode), f"{num} / {den}, {mode_name[mode]}")
    for (key, num, den, mode), text in keys.items():
        vals = []
        for res in results:
            comp = next((c for c in res["comparisons"] if c["key"] == key), None)
            got = headline(comp, num, den, mode) if comp else None
            if got is None:
                vals.append("")
            else:
                value, iqr = got
                vals.append(f"{value:.2f}x" + (f" ({iqr[0]:.2f}-{iqr[1]:.2f})" if iqr else ""))
        out.append(f"| {text} | " + " | ".join(vals) + " |")
    titles = {c["key"]: (c["title"], c["note"]) for res in results for c in res["comparisons"]}
    for key, (title, note) in titles.items():
        out += ["", f"## {title}", ""] + ([note, ""] if note else [])
        for res in results:
            comp = next((c for c in res["comparisons"] if c["key"] == key), None)
            if comp is None:
                continue
            env, peaks, st = res["env"], res["peaks"], res["settings"]
            out += [f"### {device_title(res)}", "",
                    f"`{comp.get('command', res['command'])}` (whole suite {res['wall_time_s'] / 60:.1f} min); "
                    f"torch {env['torch']}, "
                    f"torchvision {env['torchvision']}, timm {env['timm']}, peffnet {env['peffnet']}; measured peak "
                    f"{peaks['macs_per_s'] / 1e9:.1f} GMAC/s ({peaks['dtype']} matmul), bandwidth "
                    f"{peaks['bytes_per_s'] / 1e9:.1f} GB/s; AMP {'on' if st['amp'] else 'off'}; warm-up "
                    f"{st['warmup']}, {st['repeats']} rounds of {st['iters']} steps "
                    f"({st['repeats'] * st['latency_iters']} batch-1 calls per model for latency).", ""]
            out += comparison_table(comp)
            out.append("")
    out += roofline_section(results)
    return "\n".join(out).rstrip() + "\n"


def roofline_section(results: list[dict]) -> list[str]:
    """Per device: the roofline plot and, per layer family, median intensity and fraction of peak."""
    have = [r for r in results if "roofline" in r]
    if not have:
        return []
    out = ["", "## Roofline: G1 vs G16 B0 convolutions (Appendix A)", "",
           "Each convolution run alone at its in-network input shape; x = Eq. 7 intensity (MACs per byte, "
           "float32), y = achieved MAC/s; the roof is the measured matmul peak and vector-add bandwidth. "
           "Same as `peffnet roofline efficientnet_b0 g16_efficientnet_b0 --batch-size B`.", ""]
    for res in have:
        roof = res["roofline"]
        pk = roof["peaks"]
        out += [f"### {device_title(res)}", "",
                f"`{roof.get('command', res['command'])}`; batch {roof['batch_size']}, {roof['resolution']} px; peak "
                f"{pk['macs_per_s'] / 1e9:.1f} GMAC/s, bandwidth {pk['bytes_per_s'] / 1e9:.1f} GB/s, ridge "
                f"{pk['ridge_macs_per_byte']:.1f} MACs/byte.", "",
                f"![roofline](results/{roof['files'][0]})", "",
                "| model | layers | count | share of MACs | median intensity (MACs/byte) | median fraction of peak |",
                "|---|---|---|---|---|---|"]
        for row in roof["summary"]:
            frac = row["median_fraction_of_peak"]
            out.append(f"| {row['model']} | {row['kind']} | {row['layers']} | {100 * row['mac_share']:.1f} % | "
                       f"{row['median_intensity']:.1f} | {'' if frac is None else f'{100 * frac:.1f} %'} |")
        out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--only", nargs="+", metavar="KEY", help="run only these comparisons (keys as in RESULTS.md)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke test, not a measurement")
    p.add_argument("--check", action="store_true", help="GPU sizes with fixed batches and fewer rounds "
                   "(scripts/device_check.py)")
    p.add_argument("--results", type=Path, default=HERE / "results", help="folder of the per-device JSON files")
    p.add_argument("--markdown", type=Path, default=HERE / "RESULTS.md", help="the rendered tables")
    p.add_argument("--render", action="store_true", help="only rebuild the markdown from the JSON files")
    p.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's, one per core)")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if not args.render:
        device = resolve_device(args.device)
        s = SETTINGS["quick" if args.quick else "check" if args.check else device.type]
        todo = [c for c in comparisons(s) if not args.only or c.key in args.only]
        start = time.perf_counter()
        dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if s.amp else torch.float32
        peaks = measure_device(device, dtype, s.peak_repeats)
        command = " ".join(["python", "benchmarks/run_suite.py", *(argv if argv is not None else sys.argv[1:])])
        env = environment(device)
        stem = f"{device_key(env)}{'-quick' if args.quick else ''}"
        path = args.results / f"{stem}.json"
        args.results.mkdir(parents=True, exist_ok=True)
        comps = []
        for c in todo:
            runs = run_comparison(c, s, str(device), peaks)
            comps.append({"key": c.key, "title": c.title, "note": c.note, "summary": c.summary, "runs": runs,
                          "command": command})
            peaks = peaks.max_with(measure_device(device, dtype, s.peak_repeats))  # the best seen: load only lowers it
        if args.only and path.is_file():  # also the best peak of the device's last full run
            seen = json.loads(path.read_text()).get("peaks", {})
            if seen.get("dtype") == peaks.dtype:
                peaks = peaks.max_with(DevicePeaks(**{k: seen[k] for k in ("device", "dtype", "macs_per_s",
                                                                            "bytes_per_s")}))
        roofline = None
        if not args.only or "roofline" in args.only:
            roofline = run_roofline(s, device, args.results / f"{stem}-roofline", peaks if not s.amp else None)
            roofline["command"] = command
        out = {"command": command, "env": env, "peaks": peaks.to_dict(), "settings": vars(s), "comparisons": comps,
               "wall_time_s": time.perf_counter() - start}
        if args.only and path.is_file():  # a partial run replaces its parts of the device's last full run
            out = merge(json.loads(path.read_text()), out, roofline)
        elif roofline is not None:
            out["roofline"] = roofline
        best = DevicePeaks(**{k: out["peaks"][k] for k in ("device", "dtype", "macs_per_s", "bytes_per_s")})
        for comp in out["comparisons"]:  # utilization against the best peak seen on this device
            for run in comp["runs"]:
                set_utilization(run["results"], best)
                run["peaks"] = best.to_dict()
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {path} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    files = sorted(p for p in args.results.glob("*.json") if not p.stem.endswith("-quick") or args.quick)
    suites = [r for r in (json.loads(f.read_text()) for f in files) if "comparisons" in r]  # not other scripts'
    args.markdown.write_text(render(suites))
    print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as err:
        print(f"run_suite.py: error: {err}", file=sys.stderr)
        sys.exit(2)
