"""Serving: a checkpoint's final weights as ONNX or TorchScript, proxy norm folded, output verified.

Proxy normalization (paper Section 3.2, Eq. 4) depends on parameters only, never on the batch, so at
inference its moments are constants: they are folded into fixed per-channel affines before export and
the exported graph holds no moment computation. The written file is checked against the unfolded
PyTorch model on random input (a batch size other than the traced one, to exercise the dynamic batch
axis): the largest absolute difference of the logits must be at most ``1e-4``, or nothing is written.

The file describes itself (:mod:`peffnet.serving.metadata`): the class names and the preprocessing the
checkpoint records, at the exported resolution, go into the ONNX ``metadata_props`` (JSON values), or into a
TorchScript file's extra file ``peffnet.json`` and ``FILE.json`` beside it; ``peffnet predict`` reads them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peffnet.errors import ConfigError
from peffnet.files import replacing, write_file
from peffnet.serving.metadata import TORCHSCRIPT_EXTRA, describe_checkpoint, export_metadata, onnx_props

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportResult:
    """Where the model went and how closely it reproduces PyTorch."""

    path: Path
    format: str
    resolution: int
    max_abs_diff: float
    folded_layers: int
    metadata: dict[str, Any]  # what the file carries (peffnet.serving.metadata.KEYS)
    sidecar: Path | None = None  # TorchScript: FILE.json
    note: str = ""  # what was assumed for an older checkpoint that records no classes / preprocessing


def fold_for_inference(model: nn.Module) -> int:
    """Fold every proxy-normalized activation into constants (in place); returns how many were folded."""
    from peffnet.layers.proxy_norm import ProxyNormAct2d

    count = sum(isinstance(m, ProxyNormAct2d) for m in model.modules())
    if count:
        from peffnet.fusion import fold_proxy_norm

        fold_proxy_norm(model)
        left = [n for n, m in model.named_modules() if isinstance(m, ProxyNormAct2d)]
        if left:
            raise RuntimeError(f"proxy norm left unfolded in {len(left)} layers, e.g. {left[0]}")
    return count


def _write_onnx(model: nn.Module, x: torch.Tensor, path: Path, metadata: dict[str, Any]) -> None:
    batch = torch.export.Dim("batch", min=1)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), input_names=["input"], output_names=["logits"],
                                    dynamic_shapes={"x": {0: batch}}, dynamo=True, verbose=False)
        program.model.metadata_props.update(onnx_props(metadata))
        program.save(str(path))


def _write_torchscript(model: nn.Module, x: torch.Tensor, path: Path, metadata: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated upstream; still the format many servers load
        traced = torch.jit.trace(model, (x,), check_trace=False)
        with path.open("wb") as f:  # given a file name, torch.jit.save aborts the process when the disk is full
            torch.jit.save(traced, f, _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})


def _run_exported(fmt: str, path: Path, x: torch.Tensor) -> torch.Tensor:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")(x)


def default_output(checkpoint: Path, model_name: str, resolution: int, fmt: str) -> Path:
    """``<checkpoint's folder>/<model>-<resolution>px.onnx`` (or ``.torchscript.pt``)."""
    return checkpoint.parent / f"{model_name}-{resolution}px{FORMATS[fmt]}"


def export_checkpoint(checkpoint: str | Path, fmt: str = "onnx", resolution: int | None = None,
                      out: str | Path | None = None, averaged: bool = True) -> ExportResult:
    """Export a checkpoint (or a run directory's ``checkpoint.pt``) and verify it against PyTorch.

    ``resolution`` defaults to the one the checkpoint's preprocessing records (its evaluation resolution;
    for older checkpoints the training resolution); the batch axis is dynamic, the spatial size fixed. The
    class names and the preprocessing at that resolution go into the file (a TorchScript file also gets
    ``FILE.json`` beside it). Raises :class:`ConfigError` for bad input and when the export does not match
    to 1e-4.
    """
    from peffnet.checkpoint import model_from_checkpoint
    from peffnet.resolution import check_resolution, mod32_ok
    from peffnet.training.evaluate import checkpoint_file

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    checkpoint = checkpoint_file(checkpoint)
    model, state = model_from_checkpoint(checkpoint, averaged=averaged)
    train_res = int(state["train_resolution"])
    description = describe_checkpoint(state, f"checkpoint {checkpoint}")
    res = description.preprocessing.resolution if resolution is None else check_resolution(resolution)
    described = dataclasses.replace(description, preprocessing=description.preprocessing.at(res))
    metadata = export_metadata(state, described, "averaged" if averaged else "live")
    if not mod32_ok(train_res, res):
        print(f"warning: resolution {res} breaks r_test = r_train (mod 32) for training resolution {train_res} "
              "(paper Section 3.3)", file=sys.stderr)
    path = Path(out) if out is not None else default_output(checkpoint, model.cfg.name, res, fmt)
    if path.is_dir():
        raise ConfigError(f"output {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise ConfigError(f"output folder {path.parent} does not exist")

    reference = model.eval()
    served = copy.deepcopy(model).eval()
    folded = fold_for_inference(served)
    gen = torch.Generator().manual_seed(0)
    trace_x = torch.randn(2, model.cfg.in_chans, res, res, generator=gen)
    check_x = torch.randn(3, model.cfg.in_chans, res, res, generator=gen)
    sidecar = path.with_name(path.name + ".json") if fmt == "torchscript" else None
    weights = sum(t.numel() * t.element_size() for t in served.state_dict().values())  # most of the file
    with replacing(path, weights, about=True) as tmp:  # the file appears when verified, or not at all
        (_write_onnx if fmt == "onnx" else _write_torchscript)(served, trace_x, tmp, metadata)
        with torch.no_grad():
            expected = reference(check_x)
        diff = (_run_exported(fmt, tmp, check_x) - expected).abs().max().item()
        if not diff <= TOLERANCE:
            raise ConfigError(f"exported {fmt} model differs from PyTorch by {diff:.3g} > {TOLERANCE:g}; "
                              f"nothing written to {path}")
        if sidecar is not None:
            write_file(sidecar, json.dumps(metadata, indent=1) + "\n")
    return ExportResult(path, fmt, res, diff, folded, metadata, sidecar, description.note)

