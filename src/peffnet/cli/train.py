"""``peffnet train``: train a model with the paper's recipe (Section 3.4); see docs/training.md.

Every setting of :class:`peffnet.training.config.TrainConfig` is a flag (``--batch-size``) and a YAML key
(``batch_size``) of ``--config FILE.yaml``; flags override the file, the file overrides the defaults.
"""

from __future__ import annotations

import argparse

from peffnet.cli.common import run_and_report
from peffnet.training.config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (paper recipe; CPU, GPU, torchrun DDP)",
                       description="Train a G-EfficientNet with the paper's recipe (RMSProp, warm-up + "
                                   "exponential decay, Mixup/CutMix, label smoothing, weight averaging). "
                                   "Defaults are the paper's ImageNet settings; see configs/ for short runs. "
                                   "Run it under `torchrun --nproc_per_node N -m peffnet train ...` for data "
                                   "parallelism.")
    TrainConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.training.train import train

    cfg = TrainConfig.from_args(args)
    return run_and_report("train", lambda: train(cfg), lambda s: (
        f"{s['model']} ({s['norm']}) on {s['dataset']} at {s['train_resolution']} px: top-1 {s['top1']:.2f} %, "
        f"top-5 {s['top5']:.2f} % (averaged weights), {s['train_img_per_s']:.0f} img/s, {s['wall_time_s']:.0f} s "
        f"-> {cfg.out}/summary.json"))
