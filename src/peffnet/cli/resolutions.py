"""``peffnet resolutions``: native, half-resolution and mod-32 test sizes of a model (paper Section 3.3)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from peffnet.errors import ConfigError
from peffnet.models import preset
from peffnet.resolution import RESOLUTION, resolution_plan
from peffnet.settings import BOOL, INT, Settings, setting


@dataclass
class ResolutionsCommand(Settings):
    model: str | None = setting(None, "model name (see `peffnet models`); optional with --native", positional=True)
    native: int | None = setting(None, "custom native resolution (default: the model's)", INT, RESOLUTION)
    min: int | None = setting(None, "lowest test size (default: the half size)", INT)
    max: int | None = setting(None, "highest test size (default: min(700, 3 x native))", INT)
    json: bool = setting(False, "print JSON with native, half, test_resolutions", BOOL)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "resolutions", help="half-resolution training size and mod-32 test sizes of a model",
        description="Native and half-resolution training sizes (Table 1) and the test/fine-tune sizes "
                    "r_test = r_train (mod 32) in a range (Section 3.3).",
    )
    ResolutionsCommand.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    c = ResolutionsCommand.from_args(args)
    if c.model is None and c.native is None:
        raise ConfigError("give a MODEL or --native N")
    native = c.native if c.native is not None else preset(c.model).resolution
    plan = resolution_plan(native, c.min, c.max)
    if c.model is not None:
        plan = {"model": c.model, **plan}
    if c.json:
        print(json.dumps(plan))
        return 0
    label = f"{c.model}: " if c.model else ""
    print(f"{label}native {plan['native']} px, half {plan['half']} px ({plan['half_source']})")
    lo, hi = plan["range"]
    sizes = ", ".join(str(r) for r in plan["test_resolutions"]) or "none"
    print(f"test/fine-tune sizes = {plan['native']} (mod {plan['modulus']}) in [{lo}, {hi}]: {sizes}")
    return 0
