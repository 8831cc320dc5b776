"""``peffnet report``: the paper's efficiency figures (accuracy vs cost, Pareto fronts) from run directories."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="accuracy vs params/MACs/throughput/latency figures with Pareto fronts from runs",
        description="Figures 4-6 of the paper from real runs: one point per run and test resolution "
                    "(summary.json, eval.json), series labelled G-M-R, each with its Pareto front; PNG, SVG "
                    "and a markdown table into --out. Inference throughput and latency come from "
                    "RUN_DIR/bench.json, or are measured now with --measure (and recorded there).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of `peffnet train`/`finetune`")
    p.add_argument("--out", type=Path, required=True, help="folder for the figures and report.md")
    p.add_argument("--measure", action="store_true",
                   help="measure inference img/s and batch-1 latency of every point (in alternation) and "
                        "record them in each RUN_DIR/bench.json")
    p.add_argument("--batch-size", default="32", help="inference batch for --measure, or 'max' (default 32)")
    p.add_argument("--device", help="device for --measure: cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds for --measure (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.measure.bench import BenchOptions
    from peffnet.measure.report import load_run, measure_inference, write_report

    runs = [load_run(r) for r in dict.fromkeys(args.runs)]
    if args.measure:
        opts = BenchOptions(batch_size=args.batch_size, device=args.device, repeats=args.repeats)
        points = [p for pts in measure_inference(runs, opts) for p in pts]
    else:
        points = [p for pts, _ in runs for p in pts]
    extra = ["--measure", "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)] if args.measure else []
    command = " ".join(shlex.quote(a) for a in ["peffnet", "report", *args.runs, "--out", str(args.out), *extra])
    written = write_report(points, args.out, command)
    for f in written["files"]:
        print(f)
    return 0
