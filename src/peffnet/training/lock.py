"""One writer per run directory: ``DIR/peffnet.lock``, held with an OS file lock (``flock``) for the life of
the run, says who holds it (PID, host, start time, command).

The kernel releases the lock when its process ends, however it ends (SIGKILL included; on NFS, when the
dead client's lease expires), so a lock file left by a dead process is taken over, with a message naming
that process. A second run on the same directory finds the lock held and stops (exit code 2) naming the
holder. On a file system without file locks, a warning says that a second run would go undetected.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from peffnet.errors import ConfigError, WriteFailure
from peffnet.files import writing

try:
    import fcntl
except ImportError:  # not POSIX: no file locks
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "peffnet.lock"
_HELD: set[int] = set()  # file descriptors of the locks this process holds


def _close_in_child() -> None:
    """After a fork (DataLoader workers), the child drops its copies of the lock's descriptor: a ``flock`` lives
    as long as any process keeps one open, so a worker outliving a killed run would hold the lock."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def describe(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host h (since 2026-01-01 12:00:00 UTC: peffnet train ...)``."""
    if not holder:
        return "an unknown process"
    command = str(holder.get("command", "?"))
    return (f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')} "
            f"({command[:60] + '...' if len(command) > 60 else command})")


def _read(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 1 << 16, 0)
        return json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


class RunLock:
    """The lock of run directory ``directory`` (created if needed): :meth:`acquire`, then :meth:`release`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> list[str]:
        """Take the lock; returns notes (a stale lock taken over, no locks on this file system).

        Raises:
            ConfigError: another live process holds it (named in the message).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return [f"warning: no file locks here: a second run on {self.directory} would not be detected"]
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise ConfigError(f"{self.directory} is in use by another run: {describe(holder)} holds "
                                  f"{self.path}; wait for it to end or choose another --out") from None
            except OSError as err:
                os.close(fd)
                return [f"warning: cannot lock {self.path} ({err.strerror}): a second run on {self.directory} "
                        f"would not be detected"]
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
        previous = _read(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "command": " ".join(["peffnet" if sys.argv[0].endswith(("peffnet", "__main__.py")) else sys.argv[0],
                                   *sys.argv[1:]])[:1000]}
        data = (json.dumps(me) + "\n").encode()
        try:
            with writing(self.path, len(data)):
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                os.fsync(fd)
        except WriteFailure:
            os.close(fd)
            raise
        self._fd = fd
        _HELD.add(fd)
        return [f"took over {self.path} from {describe(previous)}, which is no longer running"] if previous else []

    def release(self) -> None:
        """Remove the lock file and unlock (a no-op when not held)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None
