"""``peffnet export``: a checkpoint as ONNX or TorchScript for inference, proxy norm folded, verified."""

from __future__ import annotations

import argparse
from pathlib import Path

from peffnet.cli.common import loose_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint as ONNX or TorchScript (PN folded; verified against PyTorch)",
        description="Export the final (averaged) weights of a checkpoint for inference: proxy norm folded into "
                    "constants, dynamic batch axis, fixed resolution. The file is run (onnxruntime or "
                    "TorchScript) and must match PyTorch to 1e-4, otherwise nothing is written.")
    p.add_argument("checkpoint", help="a checkpoint.pt or a run directory")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default onnx")
    p.add_argument("--resolution", type=loose_int, help="input side in pixels (default: the training resolution)")
    p.add_argument("--out", type=Path, help="output file (default: beside the checkpoint, MODEL-Rpx.onnx)")
    p.add_argument("--live", action="store_true", help="export the live instead of the averaged weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.serving.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.format, args.resolution, args.out, averaged=not args.live)
    folded = f", {result.folded_layers} proxy-norm layers folded" if result.folded_layers else ""
    print(f"wrote {result.path} ({result.format}, {result.resolution} px, dynamic batch{folded}); "
          f"max |difference| to PyTorch {result.max_abs_diff:.2e} <= 1e-4")
    return 0
