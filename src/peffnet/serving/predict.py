"""Predicting image files: the top-k class names and probabilities of each, from a checkpoint (or a run
directory) or from an ONNX file written by ``peffnet export``.

Every image goes through the preprocessing the model was evaluated with, as the checkpoint or the exported
file records it (:class:`~peffnet.data.preprocessing.Preprocessing`: for image folders resize to
``r * 256 / 224`` and centre-crop ``r``, He et al. (2015) as in the paper's Section 3.4; for Fashion-MNIST
the 28 px image on its 32 px canvas resized to ``r``), so predicting an image of the validation set gives
the logits evaluation computes for it. A checkpoint predicts with proxy norm folded into constants (paper
Section 3.2: at inference its moments depend on the parameters only), as an exported model does; the
two paths agree to about 1e-6 in probability.

All images are read and predicted before anything is returned: an unreadable file is one error naming it,
never half a result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peffnet.checkpoint import model_from_checkpoint
from peffnet.data.decode import DECODE_ERRORS, OversizedImage, open_image
from peffnet.data.preprocessing import Preprocessing
from peffnet.errors import ConfigError
from peffnet.serving.export import fold_for_inference
from peffnet.serving.metadata import Description, describe_checkpoint, describe_export
from peffnet.training.evaluate import checkpoint_file


@dataclass(frozen=True)
class Predictor:
    """A model ready to predict: its logits of a preprocessed batch, and what it was described with."""

    source: Path  # the checkpoint file or the ONNX file
    kind: str  # "checkpoint" or "onnx"
    description: Description
    logits: Callable[[torch.Tensor], torch.Tensor]  # (N, C, r, r) float32 -> (N, classes)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.description.preprocessing

    @property
    def classes(self) -> list[str]:
        return self.description.classes


@dataclass(frozen=True)
class Prediction:
    """One image's top-k: (class name, class index, probability), most probable first."""

    image: str
    top: list[tuple[str, int, float]]

    def line(self) -> str:
        """``path: label 0.9012, other 0.0512, ...``."""
        return f"{self.image}: " + ", ".join(f"{name} {p:.4f}" for name, _, p in self.top)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "top_k": [{"class": name, "index": i, "probability": p}
                                               for name, i, p in self.top]}


def _checkpoint_predictor(path: Path, fold: bool, index_labels: bool) -> Predictor:
    path = checkpoint_file(path)
    model, state = model_from_checkpoint(path)
    what = f"checkpoint {path}"
    if "classes" not in state and not index_labels:
        raise ConfigError(f"{what} records no class names (written by an older peffnet); --index-labels "
                          "predicts with class indices instead")
    if model.cfg.num_classes == 0:
        raise ConfigError(f"{what} holds a model without a classifier (num_classes 0): nothing to predict")
    description = describe_checkpoint(state, what)
    if description.preprocessing.channels != model.cfg.in_chans:
        raise ConfigError(f"{what} records {description.preprocessing.channels}-channel preprocessing for a "
                          f"{model.cfg.in_chans}-channel model")
    if fold:
        fold_for_inference(model)

    def logits(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return Predictor(path, "checkpoint", description, logits)


def _onnx_predictor(path: Path) -> Predictor:
    import onnxruntime as ort

    if not path.is_file():
        raise ConfigError(f"cannot read ONNX model {path}: no such file")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unreadable or invalid models
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read ONNX model {path}: {reason[:200]}") from None
    what = f"ONNX model {path}"
    shape, outputs = session.get_inputs()[0].shape, session.get_outputs()[0].shape
    if len(shape) != 4 or len(outputs) != 2 or not isinstance(outputs[1], int):
        raise ConfigError(f"{what} is not an image classifier: input {shape}, output {outputs}")
    description = describe_export(session.get_modelmeta().custom_metadata_map, outputs[1], what)
    p = description.preprocessing
    if list(shape[1:]) != [p.channels, p.resolution, p.resolution]:
        raise ConfigError(f"{what} takes input {shape[1:]}, but its metadata describes "
                          f"{[p.channels, p.resolution, p.resolution]}")
    name = session.get_inputs()[0].name

    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return Predictor(path, "onnx", description, logits)


def load_predictor(path: str | Path, fold: bool = True, index_labels: bool = False) -> Predictor:
    """A predictor of an ``.onnx`` file written by ``peffnet export``, or else of a checkpoint (a file or a
    run directory: its final weights, proxy norm folded unless ``fold=False``).

    Raises:
        ConfigError: one line: the file cannot be read, or carries no description (an ONNX file of another
            exporter), or is a checkpoint of an older peffnet without class names. With ``index_labels``
            such a checkpoint predicts with class indices and its model's ``pretrained_cfg`` preprocessing,
            and ``predictor.description.note`` says so.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return _onnx_predictor(path)
    return _checkpoint_predictor(path, fold, index_labels)


def read_image(path: str | Path, preprocessing: Preprocessing, max_pixels: int | None = None) -> torch.Tensor:
    """The network's input (C, r, r) for an image file of any mode, as the dataset's evaluation prepares it.

    Raises:
        ConfigError: ``cannot read image PATH: REASON`` (missing, not an image, truncated, too many pixels).
    """
    try:
        with open_image(Path(path), max_pixels) as image:
            return preprocessing(image)  # decodes it as the dataset does (a JPEG at a reduced DCT scale)
    except (*DECODE_ERRORS, OversizedImage) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, OSError) and err.strerror:
            reason = err.strerror
        raise ConfigError(f"cannot read image {path}: {reason}") from None


def predict(predictor: Predictor, images: list[str], top_k: int = 5, batch_size: int = 32) -> list[Prediction]:
    """The ``top_k`` classes (at most all) and softmax probabilities of every image, in the order given.

    Raises:
        ConfigError: an unreadable image, named (no prediction is returned then).
    """
    k = min(top_k, len(predictor.classes))
    results = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = torch.stack([read_image(path, predictor.preprocessing) for path in chunk])
        probabilities = torch.softmax(predictor.logits(x).double(), dim=1)
        values, indices = probabilities.topk(k, dim=1)
        for path, p, i in zip(chunk, values.tolist(), indices.tolist(), strict=True):
            results.append(Prediction(path, [(predictor.classes[c], c, q) for q, c in zip(p, i, strict=True)]))
    return results
