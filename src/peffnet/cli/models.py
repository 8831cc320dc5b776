"""``peffnet models``: list the preset names."""

from __future__ import annotations

import argparse
import json

from peffnet.models import list_models, preset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model names", description="List the model presets.")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = list_models()
    if args.json:
        print(json.dumps(names))
        return 0
    for name in names:
        cfg = preset(name)
        print(f"{name:24s} G{cfg.group_size:<3d} E{cfg.expansion}  native {cfg.resolution}px")
    return 0
