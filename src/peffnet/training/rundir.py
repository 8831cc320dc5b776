"""Starting a run in its directory the same way for a first start, a requeue and a ``torchrun --max-restarts``
restart, so that one command line serves them all.

:func:`claim` takes the directory's lock (one writer, :mod:`peffnet.training.lock`), removes the temporary
files of checkpoint writes a kill interrupted, finds the newest usable checkpoint (checksum verified, weights
finite; a damaged one is reported by name and the one before it used, :class:`peffnet.checkpoint.CheckpointDir`)
and decides by ``--resume`` whether the run continues from it:

- ``auto`` (the default): continue when the directory holds a checkpoint, start otherwise;
- ``yes`` (``--resume`` alone): continue; an error when there is no checkpoint;
- ``no``: start; an error when the directory holds a checkpoint (a run is never overwritten).

Rank 0 does the work; every rank gets the same answer, or the same error, through one broadcast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peffnet.checkpoint import CheckpointDir, load_checkpoint
from peffnet.errors import ConfigError
from peffnet.settings import Kind
from peffnet.training import distributed
from peffnet.training.lock import RunLock

RESUME_MODES = ("auto", "yes", "no")


def _to_resume(value: Any) -> str:
    if isinstance(value, bool):  # YAML's `resume: true` (and the boolean setting of earlier versions)
        return "yes" if value else "no"
    if isinstance(value, (dict, list, tuple)):
        raise ValueError
    aliases = {"true": "yes", "on": "yes", "1": "yes", "false": "no", "off": "no", "0": "no"}
    return aliases.get(str(value).lower(), str(value).lower())


RESUME = Kind("string", _to_resume, (str, bool))
"""The kind of a ``resume`` setting (with ``choices=RESUME_MODES``): booleans and their spellings accepted."""


@dataclass
class Start:
    """How a run starts: the checkpoint it continues from (``None``: a new run) and its directory's
    checkpoints (where :meth:`~peffnet.checkpoint.CheckpointDir.save` writes)."""

    checkpoint: dict[str, Any] | None
    checkpoints: CheckpointDir


def _prepare(checkpoints: CheckpointDir, lock: RunLock, resume: str, command: str
             ) -> tuple[dict[str, Any] | None, Path | None]:
    """Rank 0's part of :func:`claim`: lock, clean up, choose the checkpoint; prints what it found."""
    out = checkpoints.directory
    notes = lock.acquire()
    removed = checkpoints.remove_orphans()
    if removed:
        notes.append(f"removed {len(removed)} temporary file(s) of a checkpoint write that was interrupted: "
                     f"{', '.join(removed)}")
    if resume == "no":
        if checkpoints.candidates():
            raise ConfigError(f"{out} already holds a run ({checkpoints.candidates()[0].name}); --resume no never "
                              f"continues one: leave --resume at auto to continue it, or choose another --out")
        state, path = None, None
    else:
        state, path, found = checkpoints.recover()
        notes += found
        if path is None and resume == "yes":
            raise ConfigError(f"--resume yes: {out} holds no checkpoint to continue from")
    for note in notes:
        print(f"peffnet {command}: {note}", file=sys.stderr, flush=True)
    return state, path


@contextlib.contextmanager
def claim(out: Path, resume: str, keep: int, ctx: distributed.Context, command: str) -> Iterator[Start]:
    """Hold run directory ``out`` for the block (rank 0 holds the lock) and say how the run starts there.

    Raises:
        ConfigError: on every rank: the directory is in use, ``--resume`` cannot be honoured, or no checkpoint
            in it is usable.
    """
    checkpoints = CheckpointDir(out, keep)
    lock = RunLock(out) if ctx.is_main else None
    try:
        state, path, error = None, None, None
        if lock is not None:
            try:
                state, path = _prepare(checkpoints, lock, resume, command)
            except Exception as err:  # told to the other ranks before it is raised here
                error = err
        message, name = distributed.broadcast_object((str(error) if error else None, path and path.name))
        if error is not None:
            raise error
        if message is not None:
            raise ConfigError(message)
        if lock is None and name is not None:
            state = load_checkpoint(out / name)
        yield Start(state, checkpoints)
    finally:
        if lock is not None:
            lock.release()
