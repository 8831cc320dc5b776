"""``peffnet profile``: parameters, MACs, activation memory and arithmetic intensity of a model."""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass

import torch

from peffnet.models import ModelOverrides, build, preset
from peffnet.models.profile import ModelProfile, profile_model
from peffnet.resolution import RESOLUTION
from peffnet.settings import BOOL, INT, POSITIVE, setting


@dataclass
class ProfileCommand(ModelOverrides):
    model: str | None = setting(None, "model name (see `peffnet models`)", positional=True, required=True)
    resolution: int | None = setting(None, "input side in pixels (default: the model's native)", INT, RESOLUTION)
    batch_size: int = setting(1, "batch B used in the arithmetic-intensity formula (Eq. 7)", INT, POSITIVE)
    in_chans: int | None = setting(None, "input channels (default 3; 1 for Fashion-MNIST)", INT, POSITIVE)
    num_classes: int | None = setting(None, "classifier outputs (default 1000)", INT, POSITIVE)
    json: bool = setting(False, "print one JSON object", BOOL)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="params, MACs, memory and arithmetic intensity of a model",
                       description="Static cost of a model for one image (MACs at the native resolution "
                                   "unless --resolution is given; arithmetic intensity per paper Eq. 7).")
    ProfileCommand.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    c = ProfileCommand.from_args(args)
    extra = {k: getattr(c, k) for k in ("resolution", "in_chans", "num_classes") if getattr(c, k) is not None}
    cfg = preset(c.model, **c.overrides(), **extra)
    with torch.device("meta"):
        model = build(cfg)
    prof = profile_model(model, cfg.resolution, batch_size=c.batch_size, in_chans=cfg.in_chans)
    if c.json:
        out = {"model": cfg.name, "group_size": cfg.group_size, "expansion": cfg.expansion, "norm": cfg.norm,
               **prof.to_dict()}
        print(json.dumps(out))
    else:
        print(format_profile(cfg.name, f"G{cfg.group_size} E{cfg.expansion} norm={cfg.norm}", prof))
    return 0


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
