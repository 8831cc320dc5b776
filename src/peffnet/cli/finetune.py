"""``peffnet finetune``: fine-tune the last parts of a trained model at a higher resolution (Section 3.4)."""

from __future__ import annotations

import argparse

from peffnet.cli.common import add_model_args, loose_float, loose_int, run_and_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune the last 1-3 parts of a checkpoint at a higher resolution",
        description="Fine-tune from a checkpoint's averaged weights (paper Section 3.4): only the last 1, 2 or 3 "
                    "parts train (head / + stages 6-7 / + stages 4-5), the rest stays frozen in eval mode; SGD "
                    "without momentum, cosine lr from 0.25 at batch 512 (scaled with the batch), 2 epochs, no "
                    "Mixup/CutMix, validation preprocessing. Writes a run directory like `peffnet train`.")
    p.add_argument("checkpoint", help="parent checkpoint: a checkpoint.pt or a run directory")
    p.add_argument("--resolution", type=loose_int, required=True, help="fine-tuning resolution (keep it = the "
                   "training resolution mod 32; see `peffnet resolutions`)")
    p.add_argument("--stages", type=loose_int, default=2, help="parts to train: 1 head, 2 + stages 6-7, "
                   "3 + stages 4-5 [default: 2]")
    p.add_argument("--data", help="dataset spec [default: the checkpoint's]")
    p.add_argument("--out", required=True, help="run directory of the fine-tuning")
    p.add_argument("--model", help="expected model of the checkpoint (error if it holds another)")
    add_model_args(p, with_model=False)
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=loose_int, default=2, help="[default: 2]")
    g.add_argument("--batch-size", type=loose_int, default=512, help="global batch [default: 512]")
    g.add_argument("--micro-batch-size", type=loose_int, help="images per pass [default: batch / processes]")
    g.add_argument("--lr", type=loose_float, help="initial lr of the cosine schedule [default: 0.25 x batch / 512]")
    g.add_argument("--weight-decay", type=loose_float, default=1e-5, help="[default: 1e-5, as in training]")
    g.add_argument("--label-smoothing", type=loose_float, default=0.1, help="[default: 0.1, as in training]")
    g.add_argument("--seed", type=loose_int, default=0, help="[default: 0]")
    g = p.add_argument_group("data and execution")
    g.add_argument("--data-dir", help="where the dataset lives")
    g.add_argument("--subset", type=loose_int, help="fine-tune on a fixed random subset of this many images")
    g.add_argument("--val-subset", type=loose_int, help="evaluate on a fixed random subset of this many images")
    g.add_argument("--amp", default="off", help="off, bf16 or fp16 [default: off]")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda [default: auto]")
    g.add_argument("--workers", type=loose_int, help="DataLoader workers (image folders)")
    g.add_argument("--eval-batch-size", type=loose_int, help="[default: micro-batch size]")
    g.add_argument("--checkpoint-every", type=loose_int, default=0, help="also checkpoint every N steps")
    g.add_argument("--log-every", type=loose_int, default=1, help="step metrics every N steps [default: 1]")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.training.finetune import FinetuneConfig, finetune

    fields = FinetuneConfig.__dataclass_fields__
    cfg = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in fields})
    return run_and_report("finetune", lambda: finetune(cfg), lambda s: (
        f"{s['model']} fine-tuned ({s['finetune_stages']} part(s)) at {s['train_resolution']} px: "
        f"top-1 {s['top1']:.2f} %, top-5 {s['top5']:.2f} %, {s['train_img_per_s']:.0f} img/s, "
        f"{s['wall_time_s']:.0f} s -> {cfg.out}/summary.json"))
