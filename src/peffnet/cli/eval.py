"""``peffnet eval``: top-1/top-5 of a checkpoint at one or more test resolutions (paper Section 4.3)."""

from __future__ import annotations

import argparse
import json
import sys

from peffnet.cli.common import loose_int
from peffnet.errors import ConfigError


def resolution_list(text: str) -> list[int | str]:
    """``"64,96,128"`` -> ``[64, 96, 128]`` (non-numbers kept, so validation names them)."""
    return [loose_int(part.strip()) for part in text.split(",") if part.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint at one or more resolutions",
                       description="Top-1/top-5 accuracy of a checkpoint's final (averaged) weights per test "
                                   "resolution, best marked; warns when a size breaks r_test = r_train (mod 32).")
    p.add_argument("checkpoint", help="a checkpoint.pt or a run directory")
    p.add_argument("--data", help="dataset spec [default: the checkpoint's]")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--resolutions", type=resolution_list, help="comma-separated test sizes, e.g. 64,96,128 "
                       "[default: the training resolution]")
    which.add_argument("--sweep", action="store_true", help="every size = r_train (mod 32) in [--min, --max]")
    p.add_argument("--min", dest="lo", type=loose_int, help="sweep start [default: r_train - 32, at least 32]")
    p.add_argument("--max", dest="hi", type=loose_int, help="sweep end [default: min(700, 3 x r_train)]")
    p.add_argument("--json", action="store_true", help="print the eval.json record")
    p.add_argument("--out", help="write DIR/eval.json [default: next to the checkpoint when it is in a run directory]")
    p.add_argument("--live", action="store_true", help="evaluate the live instead of the averaged weights")
    p.add_argument("--data-dir", help="where the dataset lives")
    p.add_argument("--val-subset", type=loose_int, help="a fixed random subset of this many images")
    p.add_argument("--batch-size", type=loose_int, default=200, help="images per batch [default: 200]")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda [default: auto]")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="[default: off]")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.training.checkpoint import load_checkpoint
    from peffnet.training.evaluate import (
        checkpoint_file,
        eval_json_path,
        evaluate_checkpoint,
        format_table,
        sweep_resolutions,
        write_eval,
    )

    if (args.lo is not None or args.hi is not None) and not args.sweep:
        raise ConfigError("--min/--max go with --sweep")
    if isinstance(args.batch_size, str) or args.batch_size <= 0:
        raise ConfigError(f"--batch-size must be a positive integer, got {args.batch_size!r}")
    resolutions = args.resolutions
    if args.sweep:
        train_res = int(load_checkpoint(checkpoint_file(args.checkpoint))["train_resolution"])
        resolutions = sweep_resolutions(train_res, args.lo, args.hi)
    elif resolutions is not None and not resolutions:
        raise ConfigError("--resolutions needs at least one size, e.g. --resolutions 64,96")
    record = evaluate_checkpoint(args.checkpoint, args.data, resolutions, data_dir=args.data_dir,
                                 val_subset=args.val_subset, batch_size=args.batch_size, device=args.device,
                                 amp=args.amp, averaged=not args.live, progress=args.progress)
    path = eval_json_path(args.checkpoint, args.out)
    if path is not None:
        write_eval(record, path)
    if args.json:
        print(json.dumps(record))
    else:
        print(format_table(record))
    if path is not None:
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0
