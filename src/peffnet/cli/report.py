"""``peffnet report``: the paper's efficiency figures (accuracy vs cost, Pareto fronts) from run directories."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from peffnet.settings import BATCH, BOOL, INT, POSITIVE, TEXTS, Settings, setting


@dataclass
class ReportCommand(Settings):
    runs: list[str] | None = setting(None, "run directories of `peffnet train`/`finetune`", TEXTS, positional=True,
                                     required=True, metavar="RUN_DIR")
    out: str | None = setting(None, "folder for the figures and report.md", required=True)
    measure: bool = setting(False, "measure inference img/s and batch-1 latency of every point (in alternation) "
                                   "and record them in each RUN_DIR/bench.json", BOOL)
    batch_size: int | str = setting(32, "inference batch for --measure, or 'max'", BATCH)
    device: str | None = setting(None, "device for --measure: cpu or cuda[:N] (default: cuda when available)")
    repeats: int = setting(5, "timed rounds for --measure", INT, POSITIVE)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="accuracy vs params/MACs/throughput/latency figures with Pareto fronts from runs",
        description="Figures 4-6 of the paper from real runs: one point per run and test resolution "
                    "(summary.json, eval.json), series labelled G-M-R, each with its Pareto front; PNG, SVG "
                    "and a markdown table into --out. Inference throughput and latency come from "
                    "RUN_DIR/bench.json, or are measured now with --measure (and recorded there).")
    ReportCommand.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.measure.bench import BenchOptions
    from peffnet.measure.report import check_comparable, load_run, measure_inference, write_report

    c = ReportCommand.from_args(args)
    runs = [load_run(r) for r in dict.fromkeys(c.runs)]
    check_comparable([p for pts, _ in runs for p in pts])  # before --measure writes anything
    if c.measure:
        opts = BenchOptions(batch_size=c.batch_size, device=c.device, repeats=c.repeats)
        points = [p for pts in measure_inference(runs, opts) for p in pts]
    else:
        points = [p for pts, _ in runs for p in pts]
    written = write_report(points, Path(c.out), c.recorded_in(c.out).command_line("report"))
    for f in written["files"]:
        print(f)
    return 0
