"""``peffnet eval``: top-1/top-5 of a checkpoint at one or more test resolutions (paper Section 4.3)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from peffnet.errors import ConfigError
from peffnet.resolution import RESOLUTION
from peffnet.settings import BOOL, INT, INTS, POSITIVE, Settings, setting
from peffnet.training.config import AMP_MODES, DEVICES


@dataclass
class EvalCommand(Settings):
    checkpoint: str | None = setting(None, "a checkpoint.pt or a run directory", positional=True, required=True)
    data: str | None = setting(None, "dataset spec (default: the checkpoint's)")
    resolutions: list[int] | None = setting(None, "comma-separated test sizes, e.g. 64,96,128 (default: the "
                                                  "training resolution)", INTS, RESOLUTION, group="sizes")
    sweep: bool = setting(False, "every size = r_train (mod 32) in [--min, --max]", BOOL, group="sizes")
    min: int | None = setting(None, "sweep start (default: r_train - 32, at least 32)", INT, group="sizes")
    max: int | None = setting(None, "sweep end (default: min(700, 3 x r_train))", INT, group="sizes")
    json: bool = setting(False, "print the eval.json record", BOOL)
    out: str | None = setting(None, "write DIR/eval.json (default: next to the checkpoint when it is in a run "
                                    "directory)")
    live: bool = setting(False, "evaluate the live instead of the averaged weights", BOOL)
    data_dir: str | None = setting(None, "where the dataset lives")
    val_subset: int | None = setting(None, "a fixed random subset of this many images", INT, POSITIVE)
    batch_size: int = setting(200, "images per batch", INT, POSITIVE)
    device: str = setting("auto", "where to evaluate", choices=DEVICES)
    amp: str = setting("off", "mixed precision", choices=AMP_MODES)
    progress: bool = setting(True, "show a progress bar", BOOL)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint at one or more resolutions",
                       description="Top-1/top-5 accuracy of a checkpoint's final (averaged) weights per test "
                                   "resolution, best marked; warns when a size breaks r_test = r_train (mod 32).")
    EvalCommand.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.checkpoint import load_checkpoint
    from peffnet.training.evaluate import (
        checkpoint_file,
        eval_json_path,
        evaluate_checkpoint,
        format_table,
        sweep_resolutions,
        write_eval,
    )

    c = EvalCommand.from_args(args)
    if (c.min is not None or c.max is not None) and not c.sweep:
        raise ConfigError("--min/--max go with --sweep")
    if c.sweep and c.resolutions is not None:
        raise ConfigError("give --resolutions or --sweep, not both")
    resolutions = c.resolutions
    if c.sweep:
        train_res = int(load_checkpoint(checkpoint_file(c.checkpoint))["train_resolution"])
        resolutions = sweep_resolutions(train_res, c.min, c.max)
    elif resolutions is not None and not resolutions:
        raise ConfigError("--resolutions needs at least one size, e.g. --resolutions 64,96")
    record = evaluate_checkpoint(c.checkpoint, c.data, resolutions, data_dir=c.data_dir, val_subset=c.val_subset,
                                 batch_size=c.batch_size, device=c.device, amp=c.amp, averaged=not c.live,
                                 progress=c.progress)
    path = eval_json_path(c.checkpoint, c.out)
    if path is not None:
        record = write_eval(record, path)
    print(json.dumps(record) if c.json else format_table(record))
    if path is not None:
        print(f"wrote {path}", file=sys.stderr if c.json else sys.stdout)
    return 0
