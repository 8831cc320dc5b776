"""``peffnet resolutions``: native, half-resolution and mod-32 test sizes of a model (paper Section 3.3)."""

from __future__ import annotations

import argparse
import json

from peffnet.cli.common import loose_int
from peffnet.errors import ConfigError
from peffnet.models import preset
from peffnet.resolution import resolution_plan


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "resolutions", help="half-resolution training size and mod-32 test sizes of a model",
        description="Native and half-resolution training sizes (Table 1) and the test/fine-tune sizes "
                    "r_test = r_train (mod 32) in a range (Section 3.3).",
    )
    p.add_argument("model", nargs="?", help="model name (see `peffnet models`); optional with --native")
    p.add_argument("--native", type=loose_int, help="custom native resolution (default: the model's)")
    p.add_argument("--min", dest="lo", type=loose_int, help="lowest test size (default: the half size)")
    p.add_argument("--max", dest="hi", type=loose_int, help="highest test size (default: min(700, 3 x native))")
    p.add_argument("--json", action="store_true", help="print JSON with native, half, test_resolutions")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.model is None and args.native is None:
        raise ConfigError("give a MODEL or --native N")
    native = args.native if args.native is not None else preset(args.model).resolution
    plan = resolution_plan(native, args.lo, args.hi)
    if args.model is not None:
        plan = {"model": args.model, **plan}
    if args.json:
        print(json.dumps(plan))
        return 0
    label = f"{args.model}: " if args.model else ""
    print(f"{label}native {plan['native']} px, half {plan['half']} px ({plan['half_source']})")
    lo, hi = plan["range"]
    sizes = ", ".join(str(r) for r in plan["test_resolutions"]) or "none"
    print(f"test/fine-tune sizes = {plan['native']} (mod {plan['modulus']}) in [{lo}, {hi}]: {sizes}")
    return 0
