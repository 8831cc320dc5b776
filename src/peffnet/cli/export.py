"""``peffnet export``: a checkpoint as ONNX or TorchScript for inference, proxy norm folded, verified, with its
class names and preprocessing inside."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from peffnet.resolution import RESOLUTION
from peffnet.settings import BOOL, INT, Settings, setting


@dataclass
class ExportCommand(Settings):
    checkpoint: str | None = setting(None, "a checkpoint.pt or a run directory", positional=True, required=True)
    format: str = setting("onnx", "file format", choices=("onnx", "torchscript"))
    resolution: int | None = setting(None, "input side in pixels (default: the resolution of the checkpoint's "
                                           "recorded preprocessing, its evaluation resolution)", INT, RESOLUTION)
    out: str | None = setting(None, "output file (default: beside the checkpoint, MODEL-Rpx.onnx)")
    live: bool = setting(False, "export the live instead of the averaged weights", BOOL)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint as ONNX or TorchScript (PN folded; verified against PyTorch)",
        description="Export the final (averaged) weights of a checkpoint for inference: proxy norm folded into "
                    "constants, dynamic batch axis, fixed resolution. The file is run (onnxruntime or "
                    "TorchScript) and must match PyTorch to 1e-4, otherwise nothing is written. The class names "
                    "and the preprocessing go with it: ONNX metadata_props, or FILE.json beside a TorchScript "
                    "file (docs/formats.md); `peffnet predict` reads them.")
    ExportCommand.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.data.preprocessing import Preprocessing
    from peffnet.serving.export import export_checkpoint

    c = ExportCommand.from_args(args)
    result = export_checkpoint(c.checkpoint, c.format, c.resolution, c.out, averaged=not c.live)
    if result.note:
        print(f"peffnet export: note: {result.note}", file=sys.stderr)
    folded = f", {result.folded_layers} proxy-norm layers folded" if result.folded_layers else ""
    print(f"wrote {result.path} ({result.format}, {result.resolution} px, dynamic batch{folded}); "
          f"max |difference| to PyTorch {result.max_abs_diff:.2e} <= 1e-4")
    beside = f" (also in {result.sidecar})" if result.sidecar else ""
    print(f"classes: {len(result.metadata['classes'])}; preprocessing: "
          f"{Preprocessing.from_dict(result.metadata['preprocessing']).describe()}{beside}")
    return 0
