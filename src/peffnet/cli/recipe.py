"""``peffnet recipe``: half-resolution training -> fine-tuning -> resolution sweep -> summary (Sections 3.3-4.3)."""

from __future__ import annotations

import argparse

from peffnet.cli.common import run_and_report
from peffnet.training.recipe import RecipeConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipe", help="the paper's pipeline: train at half resolution, fine-tune higher, sweep test sizes",
        description="Train at half resolution, fine-tune the last parts at a higher resolution, evaluate over the "
                    "test sizes = r_train (mod 32), and write OUT/summary.md + OUT/summary.json with accuracy, time "
                    "and throughput per stage. Defaults: G16 LN+PN B0 on Fashion-MNIST (native 64, half 32): 5-8 "
                    "minutes on 2 CPU cores.")
    RecipeConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.training.recipe import format_summary, run_recipe

    cfg = RecipeConfig.from_args(args)
    return run_and_report("recipe", lambda: run_recipe(cfg), lambda summary: (
        f"{format_summary(summary)}-> {cfg.out}/summary.md, {cfg.out}/summary.json"))
