"""Checkpoints: atomic writes, validated reads, and models rebuilt from them (the format: docs/formats.md).

A checkpoint is one ``torch.save`` dict with ``"format": "peffnet-checkpoint-v2"``, the model's
:class:`~peffnet.models.config.ModelConfig` as a dict, the live weights (``"model"``) and the final
weights (``"averaged"``: the exponential average of the per-epoch weights, paper Section 3.4), the
optimizer, scheduler and loss-scaler states, the position (``"epoch"``, ``"step"``) and the resolved run
configuration. Writing goes to a temporary file in the same directory, is flushed to disk, then renamed
over the old file, so a crash at any moment leaves either the previous or the new checkpoint, never a
torn one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from peffnet.errors import ConfigError
from peffnet.models import EfficientNet, ModelConfig, build

FORMAT = "peffnet-checkpoint-v2"
V1 = "peffnet-checkpoint-v1"
"""Checkpoints before the conv/norm children had names: ``stem.0.weight`` is now ``stem.conv.weight``."""
_V1_KEY = re.compile(r"(^|\.)(stem|expand|spatial|project|head)\.([01])\.")


def v1_to_v2(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A v1 ``state_dict`` with today's keys: the index right after ``stem``, ``expand``, ``spatial``,
    ``project`` or ``head`` becomes ``conv`` (0) or ``norm`` (1); nothing else changed."""
    return {_V1_KEY.sub(lambda m: f"{m[1]}{m[2]}.{'conv' if m[3] == '0' else 'norm'}.", k): v
            for k, v in weights.items()}
REQUIRED_KEYS = ("format", "model_config", "model", "averaged", "epoch", "step", "train_resolution", "num_classes")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: temporary file in the same directory, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a peffnet checkpoint onto the CPU.

    Raises:
        ConfigError: ``cannot read checkpoint PATH: ...`` when the file is missing, unreadable, corrupt,
            or not a peffnet checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cannot read checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and I/O errors all mean the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read checkpoint {path}: {reason[:200]}") from None
    if isinstance(state, dict) and state.get("format") == V1:
        state = {**state, "format": FORMAT, **{k: v1_to_v2(state[k]) for k in ("model", "averaged") if k in state}}
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise ConfigError(f"cannot read checkpoint {path}: not a peffnet checkpoint (format {found!r}; this peffnet "
                          f"reads {FORMAT!r} and {V1!r})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ConfigError(f"cannot read checkpoint {path}: missing {', '.join(missing)}")
    return state


def config_from_checkpoint(state: dict[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` stored in a checkpoint dict (validated like any user config)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    stored = state["model_config"]
    if not isinstance(stored, dict) or not fields.issuperset(stored):
        raise ConfigError("checkpoint has an invalid model_config")
    return ModelConfig(**stored)


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """``model.load_state_dict(weights)``, with a one-line error naming the first mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ConfigError(f"{what} does not match the model ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected tensors; {first})")
    for k, v in own.items():
        if v.shape != weights[k].shape:
            raise ConfigError(f"{what} does not match the model: {k} has shape {tuple(weights[k].shape)}, "
                              f"the model expects {tuple(v.shape)}")
    model.load_state_dict(weights)


def model_from_checkpoint(path_or_state: str | os.PathLike | dict[str, Any],
                          averaged: bool = True) -> tuple[EfficientNet, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its final (``averaged``) or live weights.

    Returns the model (in eval mode, on the CPU) and the checkpoint dict.
    """
    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state)
    model = build(config_from_checkpoint(state))
    load_weights(model, state["averaged" if averaged else "model"])
    return model.eval(), state
