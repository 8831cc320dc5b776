"""Checkpoints: atomic writes, checksums, the last K of a run kept, validated reads, and models rebuilt from
them (the format: docs/formats.md).

A checkpoint is one ``torch.save`` dict with ``"format": "peffnet-checkpoint-v2"``, the model's
:class:`~peffnet.models.config.ModelConfig` as a dict, the live weights (``"model"``) and the final
weights (``"averaged"``: the exponential average of the per-epoch weights, paper Section 3.4), the
optimizer, scheduler and loss-scaler states, the position (``"epoch"``, ``"step"``) and the resolved run
configuration. Writing goes to a temporary file in the same directory, is flushed to disk, then renamed,
so a crash at any moment leaves either the previous or the new checkpoint, never a torn one.

A run directory keeps its last K checkpoints (:class:`CheckpointDir`): the newest is always
``checkpoint.pt``, the ones before it ``checkpoint-step{N}.pt``, and ``checkpoints.json`` records the step,
size and SHA-256 of each, written before the file gets its name. Reading a checkpoint of a run directory
checks its SHA-256 first and its weights for non-finite values after, so a file damaged on disk or a
diverged state is reported by name instead of used; resuming falls back to the checkpoint before it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import IO, Any

import torch

from peffnet.errors import ConfigError, WriteFailure
from peffnet.files import commit, measured, temporary, write_file, writing
from peffnet.models import EfficientNet, ModelConfig, build
from peffnet.settings import INT, POSITIVE, require

FORMAT = "peffnet-checkpoint-v2"
ZIP_MAGIC = b"PK\x03\x04"  # the first bytes of every file torch.save writes
V1 = "peffnet-checkpoint-v1"
"""Checkpoints before the conv/norm children had names: ``stem.0.weight`` is now ``stem.conv.weight``."""
_V1_KEY = re.compile(r"(^|\.)(stem|expand|spatial|project|head)\.([01])\.")


def v1_to_v2(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A v1 ``state_dict`` with today's keys: the index right after ``stem``, ``expand``, ``spatial``,
    ``project`` or ``head`` becomes ``conv`` (0) or ``norm`` (1); nothing else changed."""
    return {_V1_KEY.sub(lambda m: f"{m[1]}{m[2]}.{'conv' if m[3] == '0' else 'norm'}.", k): v
            for k, v in weights.items()}
REQUIRED_KEYS = ("format", "model_config", "model", "averaged", "epoch", "step", "train_resolution", "num_classes")
NEWEST = "checkpoint.pt"
MANIFEST = "checkpoints.json"
MANIFEST_FORMAT = "peffnet-checkpoints-v1"
OLDER = re.compile(r"checkpoint-step(\d+)\.pt")


def older_name(step: int) -> str:
    """The name a checkpoint of ``step`` takes once a newer one is ``checkpoint.pt``."""
    return f"checkpoint-step{step}.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` whole or not at all (:func:`peffnet.files.write_file`). (A run's checkpoints go
    through :meth:`CheckpointDir.save`, which also keeps older ones and checksums.)"""
    write_file(path, lambda f: torch.save(state, f))


def sha256(f: IO[bytes]) -> str:
    """SHA-256 (hex) of an open file, read from its current position to the end."""
    digest = hashlib.sha256()
    while chunk := f.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: Path) -> list[dict[str, Any]] | None:
    """The records of ``directory/checkpoints.json`` (newest first), ``[]`` when there is none, ``None`` when it
    cannot be read (then no checksum can be checked)."""
    path = directory / MANIFEST
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())["checkpoints"]
        return [r for r in records if {"file", "step", "bytes", "sha256"} <= set(r)]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_manifest(directory: Path, records: list[dict[str, Any]]) -> None:
    write_file(directory / MANIFEST, json.dumps({"format": MANIFEST_FORMAT, "checkpoints": records}, indent=1) + "\n")


def non_finite(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinity (one device sync)."""
    floats = {k: v for k, v in weights.items() if v.is_floating_point()}
    if not floats or bool(torch.stack([torch.isfinite(v).all() for v in floats.values()]).all()):
        return []
    return [k for k, v in floats.items() if not torch.isfinite(v).all()]


def check_finite(state: dict[str, Any], what: str) -> None:
    """A :class:`ConfigError` naming ``what`` when the live or the averaged weights are not all finite."""
    for key in ("model", "averaged"):
        bad = non_finite(state[key])
        if bad:
            raise ConfigError(f"{what} holds non-finite {key} weights ({len(bad)} tensors, e.g. {bad[0]})")


def _inspect(path: Path, manifest: list[dict[str, Any]] | None, load: bool = True, reread: bool = False
             ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(checksum record, state) of a checkpoint file, read once. The record comes from ``manifest`` when the
    file's SHA-256 is recorded there; a file of the rotation whose SHA-256 is not is damaged (``reread``: after
    a second look at ``checkpoints.json``, which a run writing meanwhile may have updated). ``load=False``
    only checks the checksum of a recorded file.

    Raises:
        ConfigError: one line naming the file: missing, unreadable, damaged, not a checkpoint, non-finite.
    """
    if not path.is_file():
        raise ConfigError(f"cannot read checkpoint {path}: no such file")
    rotation = path.name == NEWEST or OLDER.fullmatch(path.name)
    try:
        with path.open("rb") as f:
            digest, size = sha256(f), f.tell()
            recorded = next((r for r in manifest or [] if (r["sha256"], r["bytes"]) == (digest, size)), None)
            if recorded is None and rotation and manifest and reread:
                manifest = read_manifest(path.parent)
                recorded = next((r for r in manifest or [] if (r["sha256"], r["bytes"]) == (digest, size)), None)
            if recorded is None and rotation and manifest:  # (no checksums at all: a run of an older peffnet)
                raise ConfigError(f"checkpoint {path} is damaged: its SHA-256 {digest[:12]}... is none of those "
                                  f"recorded in {MANIFEST} when the checkpoints were written")
            if not load and recorded is not None:
                return {**recorded, "file": path.name}, None
            f.seek(0)
            if f.read(4) != ZIP_MAGIC:  # torch.save writes a zip archive: anything else is some other file
                raise ConfigError(f"cannot read checkpoint {path}: not a peffnet checkpoint (not a file of "
                                  "torch.save)")
            f.seek(0)
            state = torch.load(f, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except pickle.UnpicklingError:  # what weights_only=True refuses: objects a peffnet checkpoint never holds
        raise ConfigError(f"cannot read checkpoint {path}: not a peffnet checkpoint (it holds Python objects "
                          "other than tensors and plain values)") from None
    except Exception as err:  # zip and I/O errors all mean the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read checkpoint {path}: damaged ({reason[:200]})") from None
    if isinstance(state, dict) and state.get("format") == V1:
        state = {**state, "format": FORMAT, **{k: v1_to_v2(state[k]) for k in ("model", "averaged") if k in state}}
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise ConfigError(f"cannot read checkpoint {path}: not a peffnet checkpoint (format {found!r}; this peffnet "
                          f"reads {FORMAT!r} and {V1!r})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ConfigError(f"cannot read checkpoint {path}: missing {', '.join(missing)}")
    if recorded is not None and recorded["step"] != state["step"]:
        raise ConfigError(f"checkpoint {path} is damaged: it says step {state['step']}, its checksum was recorded "
                          f"for step {recorded['step']}")
    check_finite(state, f"checkpoint {path}")
    return {"file": path.name, "step": state["step"], "bytes": size, "sha256": digest}, state


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a peffnet checkpoint onto the CPU; in a run directory its SHA-256 must be one recorded in
    ``checkpoints.json``.

    Raises:
        ConfigError: ``cannot read checkpoint PATH: ...`` when the file is missing, unreadable, corrupt, or
            not a peffnet checkpoint; ``checkpoint PATH is damaged: ...`` when its checksum does not match;
            ``checkpoint PATH holds non-finite ...`` for NaN/inf weights.
    """
    path = Path(path)
    return _inspect(path, read_manifest(path.parent), reread=True)[1]


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class CheckpointDir:
    """The checkpoints of one run directory: ``checkpoint.pt`` (the newest) and the ``keep - 1`` before it as
    ``checkpoint-step{N}.pt``, each recorded in ``checkpoints.json`` with its step, size and SHA-256.
    Only the process that holds the run's lock (rank 0) writes."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = require("keep_checkpoints", keep, INT, POSITIVE)
        self.records: list[dict[str, Any]] = []  # what is on disk, newest first (after recover() / save())

    @property
    def newest(self) -> Path:
        return self.directory / NEWEST

    def describe_last(self) -> str:
        """``DIR/checkpoint.pt (step 12)``, or ``no checkpoint yet``."""
        if not self.records:
            return "no checkpoint yet"
        return f"{self.directory / self.records[0]['file']} (step {self.records[0]['step']})"

    def remove_orphans(self) -> list[str]:
        """Delete the temporary files of writes that a kill interrupted; returns ``NAME (SIZE)`` of each.
        Only safe while this process holds the run directory's lock."""
        removed = []
        for path in sorted(self.directory.glob(".*.tmp")):
            with_size = f"{path.name} ({_megabytes(path.stat().st_size)})"
            path.unlink(missing_ok=True)
            removed.append(with_size)
        return removed

    def candidates(self) -> list[Path]:
        """The checkpoint files present, newest first: ``checkpoint.pt``, then ``checkpoint-step{N}.pt`` by N."""
        older = sorted((p for p in self.directory.glob("checkpoint-step*.pt") if OLDER.fullmatch(p.name)),
                       key=lambda p: -int(OLDER.fullmatch(p.name).group(1)))
        return [p for p in [self.newest] if p.is_file()] + older

    def recover(self) -> tuple[dict[str, Any] | None, Path | None, list[str]]:
        """The newest checkpoint that verifies, loads and is finite (``None`` when the directory has none), its
        path, and one note per file passed over. Passed-over files are renamed ``NAME.corrupt`` and
        ``checkpoints.json`` is rewritten to what is left, so saving goes on from a consistent directory.

        Raises:
            ConfigError: checkpoints exist but none is usable (nothing is renamed then).
        """
        manifest = read_manifest(self.directory)
        notes = [] if manifest is not None else [f"{self.directory / MANIFEST} is unreadable: checkpoints checked "
                                                 f"by loading them, without checksums"]
        state, chosen, kept, bad = None, None, [], []
        for path in self.candidates():
            try:
                record, loaded = _inspect(path, manifest, load=chosen is None or manifest is None)
            except ConfigError as err:
                bad.append((path, str(err)))
                continue
            if chosen is None:
                state, chosen = loaded, path
            kept.append(record)
        if bad and chosen is None:
            raise ConfigError(f"no usable checkpoint in {self.directory}: {'; '.join(e for _, e in bad)}; move the "
                              f"files away to start the run afresh")
        for path, error in bad:
            path.replace(path.with_name(path.name + ".corrupt"))
            notes.append(f"{error}; kept as {path.name}.corrupt")
        self.records = kept
        if chosen is not None:
            _write_manifest(self.directory, kept)
        return state, chosen, notes

    def save(self, state: dict[str, Any]) -> Path:
        """Write ``state`` as ``checkpoint.pt``, the previous one becoming ``checkpoint-step{N}.pt``; keep
        ``keep`` checkpoints in all. A save at the step of the newest replaces it.

        The order makes every moment recoverable: the temporary file is written and fsynced; its checksum and
        those of every file still present go to ``checkpoints.json``; the previous newest is renamed; the new
        file is renamed to ``checkpoint.pt``; checkpoints beyond ``keep`` are deleted; ``checkpoints.json``
        lists what is left.

        Raises:
            WriteFailure: a file could not be written (disk full, no permission): one line with the bytes it
                needs; the earlier checkpoints are intact.
        """
        step = state["step"]

        def write(f: IO[bytes]) -> None:
            torch.save(state, f)

        try:
            with writing(self.newest, lambda: measured(write)):
                tmp = temporary(self.newest, write)
                try:
                    with tmp.open("rb") as f:
                        new = {"file": NEWEST, "step": step, "bytes": os.fstat(f.fileno()).st_size, "sha256": sha256(f)}
                    previous = [r for r in self.records if r["step"] != step]
                    older = [{**r, "file": older_name(r["step"])} for r in previous]
                    kept = older[: self.keep - 1]
                    _write_manifest(self.directory, [new, *older, *self.records])  # every file present meanwhile
                    for r, moved in zip(previous, older, strict=True):
                        if r["file"] == NEWEST and moved in kept:
                            os.replace(self.newest, self.directory / moved["file"])
                    commit(tmp, self.newest)
                finally:
                    tmp.unlink(missing_ok=True)
                for r in self.records + older:
                    if r["file"] != NEWEST and r["file"] not in {k["file"] for k in kept}:
                        (self.directory / r["file"]).unlink(missing_ok=True)
                _write_manifest(self.directory, [new, *kept])
        except WriteFailure as err:
            raise err.noting(f"the earlier checkpoints are intact: {self.describe_last()}") from None
        self.records = [new, *kept]
        return self.newest


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
