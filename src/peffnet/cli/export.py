"""``peffnet export``: a checkpoint as ONNX or TorchScript for inference, proxy norm folded, verified."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from peffnet.resolution import RESOLUTION
from peffnet.settings import BOOL, INT, Settings, setting


@dataclass
class ExportCommand(Settings):
    checkpoint: str | None = setting(None, "a checkpoint.pt or a run directory", positional=True, required=True)
    format: str = setting("onnx", "file format", choices=("onnx", "torchscript"))
    resolution: int | None = setting(None, "input side in pixels (default: the training resolution)", INT,
                                     RESOLUTION)
    out: str | None = setting(None, "output file (default: beside the checkpoint, MODEL-Rpx.onnx)")
    live: bool = setting(False, "export the live instead of the averaged weights", BOOL)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint as ONNX or TorchScript (PN folded; verified against PyTorch)",
        description="Export the final (averaged) weights of a checkpoint for inference: proxy norm folded into "
                    "constants, dynamic batch axis, fixed resolution. The file is run (onnxruntime or "
                    "TorchScript) and must match PyTorch to 1e-4, otherwise nothing is written.")
    ExportCommand.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.serving.export import export_checkpoint

    c = ExportCommand.from_args(args)
    result = export_checkpoint(c.checkpoint, c.format, c.resolution, c.out, averaged=not c.live)
    folded = f", {result.folded_layers} proxy-norm layers folded" if result.folded_layers else ""
    print(f"wrote {result.path} ({result.format}, {result.resolution} px, dynamic batch{folded}); "
          f"max |difference| to PyTorch {result.max_abs_diff:.2e} <= 1e-4")
    return 0
