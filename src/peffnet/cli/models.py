"""``peffnet models``: list the preset names."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from peffnet.models import list_models, preset
from peffnet.settings import BOOL, Settings, setting


@dataclass
class ModelsCommand(Settings):
    json: bool = setting(False, "print a JSON list", BOOL)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model names", description="List the model presets.")
    ModelsCommand.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = ModelsCommand.from_args(args)
    names = list_models()
    if cfg.json:
        print(json.dumps(names))
        return 0
    for name in names:
        m = preset(name)
        print(f"{name:24s} G{m.group_size:<3d} E{m.expansion}  native {m.resolution}px")
    return 0
