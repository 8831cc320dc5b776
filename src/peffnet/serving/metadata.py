"""What makes an artifact self-describing: the class names and the :class:`Preprocessing` a checkpoint records,
carried into exported models (docs/formats.md: "Exported models").

An ONNX file holds them in its ``metadata_props``, one JSON text per key; a TorchScript file in its extra file
``peffnet.json`` and in ``FILE.json`` beside it, one JSON object. Either way the keys are :data:`KEYS`.
Checkpoints written before peffnet recorded ``classes`` and ``preprocessing`` are described by the model's
``pretrained_cfg`` (the image-folder preprocessing, paper Section 3.4) and class indices, with a note saying so.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from peffnet.checkpoint import config_from_checkpoint
from peffnet.data.preprocessing import Preprocessing
from peffnet.errors import ConfigError
from peffnet.models.config import data_config
from peffnet.version import __version__

FORMAT = "peffnet-export-v1"
KEYS = ("format", "classes", "preprocessing", "model_config", "train_resolution", "weights", "peffnet")
TORCHSCRIPT_EXTRA = "peffnet.json"
"""The name of the description inside a TorchScript file (``torch.jit.load(..., _extra_files=...)``)."""


@dataclass(frozen=True)
class Description:
    """The class names (by output index) and the preprocessing of a model; ``note`` says what was assumed
    for a checkpoint that records neither ("" when nothing was)."""

    classes: list[str]
    preprocessing: Preprocessing
    note: str = ""


def check_classes(classes: Any, num_classes: int, what: str) -> list[str]:
    """``classes`` as a list of ``num_classes`` strings, else a one-line error naming ``what``."""
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"{what} has invalid classes: expected a list of names, got {type(classes).__name__}")
    if len(classes) != num_classes:
        raise ConfigError(f"{what} names {len(classes)} classes, but its model has {num_classes} outputs")
    return classes


def describe_checkpoint(state: dict[str, Any], what: str) -> Description:
    """The classes and preprocessing a checkpoint records; for an older checkpoint, class indices and the
    model's ``pretrained_cfg`` at the training resolution, and a one-line note saying so."""
    cfg = config_from_checkpoint(state)
    missing = [key for key in ("classes", "preprocessing") if key not in state]
    try:
        classes = check_classes(state["classes"], cfg.num_classes, what) if "classes" in state else [
            str(i) for i in range(cfg.num_classes)]
        preprocessing = (Preprocessing.from_dict(state["preprocessing"]) if "preprocessing" in state else
                         Preprocessing.from_pretrained_cfg(data_config(cfg), int(state["train_resolution"])))
    except ConfigError as err:
        raise ConfigError(f"{what}: {err}") from None
    note = ""
    if missing:
        assumed = [("class indices 0-" + str(cfg.num_classes - 1)) if "classes" in missing else "",
                   (f"the model's pretrained_cfg preprocessing ({preprocessing.describe()})"
                    if "preprocessing" in missing else "")]
        note = (f"{what} records no {' and no '.join(missing)} (written by an older peffnet); assuming "
                f"{' and '.join(a for a in assumed if a)}")
    return Description(classes, preprocessing, note)


def export_metadata(state: dict[str, Any], description: Description, weights: str) -> dict[str, Any]:
    """The :data:`KEYS` of an exported model, as Python values."""
    return {"format": FORMAT, "classes": description.classes, "preprocessing": description.preprocessing.to_dict(),
            "model_config": dataclasses.asdict(config_from_checkpoint(state)),
            "train_resolution": int(state["train_resolution"]), "weights": weights, "peffnet": __version__}


def onnx_props(metadata: dict[str, Any]) -> dict[str, str]:
    """``metadata`` as ONNX ``metadata_props``: every value a JSON text."""
    return {key: json.dumps(value) for key, value in metadata.items()}


def describe_export(props: dict[str, str], num_outputs: int, what: str) -> Description:
    """The description an exported model carries (ONNX ``metadata_props`` as read by onnxruntime, or the
    TorchScript sidecar's object with each value JSON-encoded); a one-line error when it has none."""
    try:
        metadata = {key: json.loads(value) for key, value in props.items() if key in KEYS}
    except ValueError:
        raise ConfigError(f"{what} has peffnet metadata that is not JSON") from None
    if metadata.get("format") != FORMAT:
        raise ConfigError(f"{what} carries no peffnet metadata (classes, preprocessing): export it with "
                          f"`peffnet export` of this version, or predict from the checkpoint")
    missing = [key for key in ("classes", "preprocessing") if key not in metadata]
    if missing:
        raise ConfigError(f"{what} has peffnet metadata without {', '.join(missing)}")
    try:
        preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
    except ConfigError as err:
        raise ConfigError(f"{what}: {err}") from None
    return Description(check_classes(metadata["classes"], num_outputs, what), preprocessing)
