"""``peffnet finetune``: fine-tune the last parts of a trained model at a higher resolution (Section 3.4)."""

from __future__ import annotations

import argparse

from peffnet.cli.common import run_and_report
from peffnet.training.finetune import FinetuneConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune the last 1-3 parts of a checkpoint at a higher resolution",
        description="Fine-tune from a checkpoint's averaged weights (paper Section 3.4): only the last 1, 2 or 3 "
                    "parts train (head / + stages 6-7 / + stages 4-5), the rest stays frozen in eval mode; SGD "
                    "without momentum, cosine lr from 0.25 at batch 512 (scaled with the batch), 2 epochs, no "
                    "Mixup/CutMix, validation preprocessing. Writes a run directory like `peffnet train`.")
    FinetuneConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.training.finetune import finetune

    cfg = FinetuneConfig.from_args(args)
    return run_and_report("finetune", lambda: finetune(cfg), lambda s: (
        f"{s['model']} fine-tuned ({s['finetune_stages']} part(s)) at {s['train_resolution']} px: "
        f"top-1 {s['top1']:.2f} %, top-5 {s['top5']:.2f} %, {s['train_img_per_s']:.0f} img/s, "
        f"{s['wall_time_s']:.0f} s -> {cfg.out}/summary.json"))
