"""``peffnet models``: the model names, with their group size, expansion, norm, parameters and MACs."""

from __future__ import annotations

import argparse
import fnmatch
import json
from dataclasses import dataclass

from peffnet.errors import ConfigError
from peffnet.models import DEFAULT_NORM, list_models, preset
from peffnet.models.config import split_norm
from peffnet.models.profile import preset_costs
from peffnet.models.timm_compat import PREFIX
from peffnet.settings import BOOL, TEXTS, Settings, setting


@dataclass
class ModelsCommand(Settings):
    patterns: list[str] | None = setting(None, "only names matching these shell patterns, e.g. 'g16_*_lnpn'", TEXTS,
                                         positional=True, metavar="PATTERN")
    json: bool = setting(False, "print a JSON list of objects (name, timm_name, group_size, expansion, norm, "
                                "default_norm, params, macs, resolution)", BOOL)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model names with their norm, parameters and MACs",
                       description=f"List the model names: each preset bare (norm {DEFAULT_NORM}, the default) and "
                                   f"with each norm suffix. Parameters are for 1000 classes, MACs for one image at "
                                   f"the native resolution. After `import peffnet`, timm knows each name as "
                                   f"{PREFIX}NAME.")
    ModelsCommand.add_arguments(p)
    p.set_defaults(func=run)


def rows(patterns: list[str] | None = None) -> list[dict]:
    """One row per model name (matching any of ``patterns``, shell-style): its preset, norm and costs."""
    names = [n for n in list_models(with_norms=True) if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not names:
        raise ConfigError(f"no model name matches {' '.join(patterns or [])}; run `peffnet models` for the list")
    costs = {base: preset_costs(base) for base in dict.fromkeys(split_norm(n)[0] for n in names)}
    out = []
    for name in names:
        cfg, (macs, params) = preset(name), costs[split_norm(name)[0]]
        out.append({"name": name, "timm_name": PREFIX + name, "group_size": cfg.group_size,
                    "expansion": cfg.expansion, "norm": cfg.norm, "default_norm": split_norm(name)[1] is None,
                    "params": params[cfg.norm], "macs": macs, "resolution": cfg.resolution})
    return out


def run(args: argparse.Namespace) -> int:
    cfg = ModelsCommand.from_args(args)
    table = rows(cfg.patterns)
    if cfg.json:
        print(json.dumps(table))
        return 0
    print(f"{'name':26s} {'G':>3s} {'E':>2s}  {'norm':14s} {'params':>7s} {'MACs':>7s} {'native':>7s}")
    for r in table:
        norm = f"{r['norm']} (default)" if r["default_norm"] else r["norm"]
        print(f"{r['name']:26s} {r['group_size']:3d} {r['expansion']:2d}  {norm:14s} {r['params'] / 1e6:6.2f}M "
              f"{r['macs'] / 1e9:6.3f}G {r['resolution']:5d}px")
    print(f"timm: {PREFIX}NAME after `import peffnet`; a name without a norm suffix is {DEFAULT_NORM}")
    return 0
