"""``peffnet recipe``: half-resolution training -> fine-tuning -> resolution sweep -> summary (Sections 3.3-4.3)."""

from __future__ import annotations

import argparse

from peffnet.cli.common import loose_float, loose_int, run_and_report
from peffnet.cli.eval import resolution_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipe", help="the paper's pipeline: train at half resolution, fine-tune higher, sweep test sizes",
        description="Train at half resolution, fine-tune the last parts at a higher resolution, evaluate over the "
                    "test sizes = r_train (mod 32), and write OUT/summary.md + OUT/summary.json with accuracy, time "
                    "and throughput per stage. Defaults: G16 LN+PN B0 on Fashion-MNIST (native 64, half 32), about "
                    "10 minutes on 2 CPU cores.")
    p.add_argument("--out", required=True, help="recipe directory (train/, finetune/, native/, summaries)")
    p.add_argument("--data", default="fashion-mnist", help="dataset spec [default: fashion-mnist]")
    p.add_argument("--model", default="g16_efficientnet_b0", help="[default: g16_efficientnet_b0]")
    p.add_argument("--norm", default="lnpn", help="[default: lnpn, the paper's LN + proxy norm]")
    g = p.add_argument_group("resolutions")
    g.add_argument("--native", type=loose_int, help="native size [default: 64 for fashion-mnist/synthetic, else "
                   "the model's]")
    g.add_argument("--train-resolution", type=loose_int, help="[default: half of native, `peffnet resolutions`]")
    g.add_argument("--finetune-resolution", type=loose_int, help="[default: native]")
    g.add_argument("--test-resolutions", type=resolution_list, help="comma-separated [default: = r_train (mod 32) "
                   "from r_train to native + 32]")
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=loose_int, default=1, help="training epochs [default: 1]")
    g.add_argument("--batch-size", type=loose_int, default=128, help="training global batch [default: 128]")
    g.add_argument("--subset", type=loose_int, help="train on a fixed random subset of this many images")
    g.add_argument("--train-config", metavar="FILE.yaml", help="`peffnet train` settings (over the recipe's "
                   "short-run defaults for fashion-mnist/synthetic, see docs/resolution.md)")
    g.add_argument("--finetune-stages", type=loose_int, default=2, help="1, 2 or 3 parts [default: 2]")
    g.add_argument("--finetune-epochs", type=loose_int, default=2, help="[default: 2]")
    g.add_argument("--finetune-batch-size", type=loose_int, default=256, help="[default: 256]")
    g.add_argument("--finetune-lr", type=loose_float, help="initial lr of the cosine schedule [default: 0.05 for "
                   "fashion-mnist/synthetic, else 0.25 x batch / 512]")
    g.add_argument("--finetune-subset", type=loose_int, default=10000, help="fine-tune on this many training "
                   "images [default: 10000]")
    g.add_argument("--val-subset", type=loose_int, default=2000, help="validation images of the per-epoch "
                   "evaluations inside training and fine-tuning [default: 2000]")
    g.add_argument("--test-subset", type=loose_int, help="validation images of the final evaluations [default: all]")
    g.add_argument("--baseline", action="store_true", help="also train at the native resolution, for comparison")
    g.add_argument("--seed", type=loose_int, default=0, help="[default: 0]")
    g = p.add_argument_group("execution")
    g.add_argument("--data-dir", help="where the dataset lives")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda [default: auto]")
    g.add_argument("--amp", default="off", help="off, bf16 or fp16 [default: off]")
    g.add_argument("--threads", type=loose_int, help="torch CPU threads [default: torch's]")
    g.add_argument("--resume", action="store_true", help="continue an interrupted recipe in --out")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.training.recipe import RecipeConfig, format_summary, run_recipe

    fields = RecipeConfig.__dataclass_fields__
    cfg = RecipeConfig(**{k: v for k, v in vars(args).items() if k in fields})
    return run_and_report("recipe", lambda: run_recipe(cfg), lambda summary: (
        f"{format_summary(summary)}-> {args.out}/summary.md, {args.out}/summary.json"))
