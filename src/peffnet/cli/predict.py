"""``peffnet predict``: the top-k class names and probabilities of image files, from a checkpoint or an ONNX
file, with the preprocessing the model was evaluated with."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from peffnet.settings import BOOL, INT, POSITIVE, TEXTS, Settings, setting


@dataclass
class PredictCommand(Settings):
    model: str | None = setting(None, "a checkpoint.pt, a run directory, or an .onnx file of `peffnet export`",
                                positional=True, required=True, metavar="CHECKPOINT_OR_ONNX")
    images: list[str] | None = setting(None, "image files (any format and mode PIL reads)", TEXTS, positional=True,
                                       required=True, metavar="IMAGE")
    top_k: int = setting(5, "classes shown per image (at most all)", INT, POSITIVE)
    json: bool = setting(False, "print one JSON record (docs/formats.md) instead of a line per image", BOOL)
    batch_size: int = setting(32, "images per forward pass", INT, POSITIVE)
    index_labels: bool = setting(False, "a checkpoint of an older peffnet without class names: predict with class "
                                        "indices and its model's pretrained_cfg preprocessing (else: an error)",
                                 BOOL)
    fold: bool = setting(True, "checkpoints: fold proxy norm into constants first, as export does (faster; "
                               "--no-fold runs the model as evaluation does)", BOOL)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="top-k classes of image files, from a checkpoint or an exported ONNX model",
        description="Print, per image, the top-k class names and probabilities ('path: label p, label p, ...'). "
                    "Images are prepared as the model's evaluation prepared its validation set, as the "
                    "checkpoint or the ONNX metadata records it; any PIL mode is converted as the dataset "
                    "converts it. An unreadable image is one error line naming it (exit 2), and nothing else "
                    "is printed.")
    PredictCommand.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from peffnet.serving.predict import load_predictor, predict

    c = PredictCommand.from_args(args)
    predictor = load_predictor(c.model, fold=c.fold, index_labels=c.index_labels)
    if predictor.description.note:
        print(f"peffnet predict: note: {predictor.description.note}", file=sys.stderr)
    results = predict(predictor, c.images, c.top_k, c.batch_size)
    if c.json:
        print(json.dumps({"model": str(predictor.source), "kind": predictor.kind,
                          "classes": len(predictor.classes),
                          "preprocessing": predictor.preprocessing.to_dict(),
                          "predictions": [r.to_dict() for r in results]}))
    else:
        print("\n".join(r.line() for r in results))
    return 0
