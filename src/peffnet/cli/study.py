"""``peffnet study``: train a grid of configurations and measure them side by side (paper Figure 1)."""

from __future__ import annotations

import argparse

from peffnet.study.config import StudyConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="the paper's Figure 1 on this machine: accuracy vs MACs / training time / throughput of "
                      "G1/G16 x GN/LN+PN/BN x native/half+fine-tuning",
        description="Train every configuration of a grid (group size x normalization x regime, per seed) with the "
                    "same epoch budget, time all of them in one alternating benchmark (each in its fastest memory "
                    "layout and precision), and write OUT/study.json, OUT/study.md and the figures. Rerunning "
                    "skips finished runs; more seeds or configurations extend the study.")
    StudyConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.study.run import run_study

    cfg = StudyConfig.from_args(args)
    record = run_study(cfg)
    print(f"{len(record['rows'])} run(s) of {len(record['configurations'])} configuration(s) -> {cfg.out}/study.md, "
          f"{cfg.out}/study.json")
    return 0
