"""``peffnet train``: train a model with the paper's recipe (Section 3.4); see docs/training.md.

Every setting of :class:`peffnet.training.config.TrainConfig` is a flag (``--batch-size``) and a YAML key
(``batch_size``) of ``--config FILE.yaml``; flags override the file, the file overrides the defaults.
Run it under ``torchrun --nproc_per_node N -m peffnet train ...`` for data parallelism.
"""

from __future__ import annotations

import argparse

from peffnet.cli.common import add_model_args, loose_int, run_and_report
from peffnet.training.config import FIELDS, make_config, read_yaml

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
    from peffnet.training.train import train

    file_settings = read_yaml(args.config) if args.config else {}
    flags = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    cfg = make_config(file_settings, flags)
    return run_and_report("train", lambda: train(cfg), lambda s: (
        f"{s['model']} ({s['norm']}) on {s['dataset']} at {s['train_resolution']} px: top-1 {s['top1']:.2f} %, "
        f"top-5 {s['top5']:.2f} % (averaged weights), {s['train_img_per_s']:.0f} img/s, {s['wall_time_s']:.0f} s "
        f"-> {cfg.out}/summary.json"))
