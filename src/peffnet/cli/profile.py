"""``peffnet profile``: parameters, MACs, activation memory and arithmetic intensity of a model."""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from peffnet.cli.common import add_model_args, loose_int, model_overrides
from peffnet.models import build, preset
from peffnet.models.profile import ModelProfile, profile_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="params, MACs, memory and arithmetic intensity of a model",
                       description="Static cost of a model for one image (MACs at the native resolution "
                                   "unless --resolution is given; arithmetic intensity per paper Eq. 7).")
    add_model_args(p)
    p.add_argument("--resolution", type=loose_int, help="input side in pixels (default: the model's native)")
    p.add_argument("--batch-size", type=loose_int, default=1,
                   help="batch B used in the arithmetic-intensity formula (default 1)")
    p.add_argument("--in-chans", type=loose_int, help="input channels (default 3; 1 for Fashion-MNIST)")
    p.add_argument("--num-classes", type=loose_int, help="classifier outputs (default 1000)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = model_overrides(args)
    for field in ("resolution", "in_chans", "num_classes"):
        if getattr(args, field) is not None:
            overrides[field] = getattr(args, field)
    cfg = preset(args.model, **overrides)
    batch = positive_int("batch_size", args.batch_size)
    with torch.device("meta"):
        model = build(cfg)
    prof = profile_model(model, cfg.resolution, batch_size=batch, in_chans=cfg.in_chans)
    if args.json:
        out = {"model": cfg.name, "group_size": cfg.group_size, "expansion": cfg.expansion, "norm": cfg.norm,
               **prof.to_dict()}
        print(json.dumps(out))
    else:
        print(format_profile(cfg.name, f"G{cfg.group_size} E{cfg.expansion} norm={cfg.norm}", prof))
    return 0


def positive_int(field: str, value: int | str) -> int:
    from peffnet.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{field} must be a positive integer, got {value!r}")
    return value


def format_profile(name: str, desc: str, prof: ModelProfile) -> str:
    """The human-readable report: totals, per-part breakdown, per-conv arithmetic intensity."""
    mib = 2**20
    lines = [
        f"{name} ({desc}) at {prof.resolution}x{prof.resolution}",
        f"  parameters            {prof.params / 1e6:10.3f} M",
        f"  forward MACs          {prof.macs / 1e9:10.3f} G  (one image)",
        f"  activation memory     {prof.activation_bytes / mib:10.1f} MiB per image (fp32, all layer outputs)",
        f"  arithmetic intensity  {prof.intensity:10.1f} FLOPs/element (Eq. 6 summed over convs, B={prof.batch_size})",
        "",
        f"  {'part':8s} {'params (M)':>11s} {'MACs (M)':>10s} {'act (MiB)':>10s} {'median AI':>10s}",
    ]
    for part, st in prof.parts.items():
        ais = [layer.intensity for layer in prof.layers if layer.part == part and layer.kind == "conv"]
        med = statistics.median(ais) if ais else float("nan")
        lines.append(f"  {part:8s} {st.params / 1e6:11.3f} {st.macs / 1e6:10.1f} {4 * st.activations / mib:10.2f}"
                     f" {med:10.1f}")
    lines += ["", f"  {'convolution':34s} {'k':>2s} {'s':>2s} {'G':>5s} {'f':>4s} {'MACs (M)':>9s} {'AI':>7s}"]
    for layer in prof.layers:
        if layer.kind == "conv":
            lines.append(f"  {layer.name:34s} {layer.kernel:2d} {layer.stride:2d} {layer.group_size:5d}"
                         f" {layer.field:4d} {layer.macs / 1e6:9.2f} {layer.intensity:7.1f}")
    return "\n".join(lines)
