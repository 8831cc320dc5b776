"""``peffnet train``: train a model with the paper's recipe (Section 3.4); see docs/training.md.

Every setting of :class:`peffnet.runconfig.TrainConfig` is a flag (``--batch-size``) and a YAML key
(``batch_size``) of ``--config FILE.yaml``; flags override the file, the file overrides the defaults.
Run it under ``torchrun --nproc_per_node N -m peffnet train ...`` for data parallelism.
"""

from __future__ import annotations

import argparse
import os
import sys

from peffnet.cli.common import add_model_args, loose_int
from peffnet.runconfig import FIELDS, make_config, read_yaml

MODEL_FLAGS = ("group_size", "expansion", "norm")  # added by cli.common.add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (paper recipe; CPU, GPU, torchrun DDP)",
                       description="Train a G-EfficientNet with the paper's recipe (RMSProp, warm-up + "
                                   "exponential decay, Mixup/CutMix, label smoothing, weight averaging). "
                                   "Defaults are the paper's ImageNet settings; see configs/ for short runs.")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of settings (keys as below, e.g. batch_size)")
    add_model_args(p, with_model=False)
    for name, f in FIELDS.items():
        if name in MODEL_FLAGS:
            continue
        flag = "--" + name.replace("_", "-")
        meta = f.metadata
        default = "auto" if f.default is None else f.default
        help_text = f"{meta['help']} [{'required' if default == '' else f'default: {default}'}]"
        if meta["type"] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(flag, type=loose_int if meta["type"] is int else str, default=None, help=help_text,
                           metavar=name.upper() if not meta["choices"] else "{" + ",".join(meta["choices"]) + "}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.engine import NonFiniteLoss
    from peffnet.train import train

    file_settings = read_yaml(args.config) if args.config else {}
    flags = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    cfg = make_config(file_settings, flags)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    try:
        summary = train(cfg)
    except NonFiniteLoss as err:
        if main_rank:
            print(f"peffnet train: error: {err}", file=sys.stderr)
        return 1
    if main_rank:
        print(f"{summary['model']} ({summary['norm']}) on {summary['dataset']} at {summary['train_resolution']} px: "
              f"top-1 {summary['top1']:.2f} %, top-5 {summary['top5']:.2f} % (averaged weights), "
              f"{summary['train_img_per_s']:.0f} img/s, {summary['wall_time_s']:.0f} s -> {cfg.out}/summary.json")
    return 0
