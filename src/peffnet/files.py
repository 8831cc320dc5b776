"""Writing the files a command leaves, whole or not at all, and one error when the disk refuses them.

A file that is written in one go (checkpoints, ``summary.json``, exported models, figures, a study's
results) goes to a new temporary file ``.NAME.*.tmp`` beside it, is flushed to disk and renamed over the
target (:func:`write_file`; :func:`replacing` for writers that want a file name), so a failure at any moment
leaves the previous file as it was and no temporary file behind. A log grows by whole records
(:func:`append_file`): a record the disk cannot take is cut off again.

A write that fails for want of room or rights becomes one :class:`~peffnet.errors.WriteFailure`, whatever
raised it: an ``OSError`` (disk full, quota, read-only file system, no permission, an I/O error) or the
``RuntimeError`` torch's zip writer raises when a write falls short (``torch.save``, ``torch.jit.save``).
Its one line names the file, its directory, the bytes the write needed and those free there; the command
exits with code 1 (docs/training.md, "Exit codes").
"""

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from peffnet.errors import WriteFailure

WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG,
                          errno.EIO})
"""The ``errno`` values of an ``OSError`` that mean "this file cannot be written here"."""

TORCH_WRITER = ("inline_container", "PytorchStreamWriter")
"""Words in the message of the ``RuntimeError`` torch's zip writer raises for a short write."""

Size = int | Callable[[], int]
"""The bytes a write needs, or a function that counts them (called only when the write failed)."""


class _Counter:
    """A file that keeps nothing and counts the bytes written to it."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def measured(write: Callable[[IO[bytes]], object]) -> int:
    """The bytes ``write(f)`` writes into ``f``, counted without writing them anywhere."""
    counter = _Counter()
    write(counter)  # type: ignore[arg-type]
    return counter.bytes


def free_bytes(directory: Path) -> int | None:
    """Bytes free in ``directory``'s file system for this user (``None`` when it cannot be asked)."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _reason(err: BaseException) -> str | None:
    """Why ``err`` means the file cannot be written (the ``OSError`` behind it, or torch's short write);
    ``None`` for any other error."""
    seen, cause = set(), err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno in WRITE_ERRNOS:
            return cause.strerror or os.strerror(cause.errno)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, RuntimeError) and any(word in str(err) for word in TORCH_WRITER):
        return "the write fell short"
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike, needs: Size, about: bool = False) -> Iterator[None]:
    """Turns an error of the block that means ``path`` cannot be written into a :class:`WriteFailure` with
    the bytes it ``needs`` (``about``: an estimate); other errors pass unchanged."""
    try:
        yield
    except WriteFailure:
        raise
    except Exception as err:
        reason = _reason(err)
        if reason is None:
            raise
        path = Path(path)
        size = needs() if callable(needs) else needs
        raise WriteFailure(path, reason, size, free_bytes(path.parent), about=about) from None


def _fsync(path: Path) -> None:
    """Make ``path`` (a file, or a directory's renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary(path: Path, write: Callable[[IO[bytes]], object] | None = None) -> Path:
    """A new temporary file ``.NAME.*.tmp`` beside ``path`` holding what ``write`` writes, flushed to disk,
    with the permissions of any new file (``mkstemp`` makes them private); removed again if anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if write is not None:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(name, 0o666 & ~umask)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def commit(tmp: Path, path: Path) -> None:
    """Rename the temporary file ``tmp`` to ``path`` and make the rename durable."""
    os.replace(tmp, path)
    _fsync(path.parent)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, needs: Size, about: bool = False) -> Iterator[Path]:
    """For a writer that wants a file name (ONNX, TorchScript): a temporary file beside ``path`` to write;
    when the block ends it is flushed to disk and renamed to ``path``, and if the block fails it is removed
    (``path`` stays as it was). Write errors become a :class:`WriteFailure` (see :func:`writing`)."""
    path = Path(path)
    with writing(path, needs, about):
        tmp = temporary(path)
        try:
            yield tmp
            _fsync(tmp)
            commit(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def relative_to(path: str | os.PathLike, directory: str | os.PathLike) -> str:
    """``path`` as a file in ``directory`` records it: relative to ``directory`` (``checkpoint.pt``,
    ``../train/checkpoint.pt``), so that results moved or shipped elsewhere name no folder of the machine that
    made them."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(directory))


def write_file(path: str | os.PathLike, content: bytes | str | Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` whole or not at all: ``content`` as bytes, as UTF-8 text, or what ``content(f)``
    writes into a binary file ``f`` (``torch.save``, ``fig.savefig``).

    Raises:
        WriteFailure: the disk refused it (the previous ``path``, if any, is intact; no temporary file left).
    """
    path = Path(path)
    data = content.encode() if isinstance(content, str) else content
    write = data if callable(data) else lambda f: f.write(data)
    with writing(path, (lambda: measured(write)) if callable(data) else len(data)):
        tmp = temporary(path, write)
        try:
            commit(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def append_file(path: str | os.PathLike, content: bytes | str) -> None:
    """Append ``content`` to ``path`` (created if missing) whole or not at all: what the disk did not take is
    cut off again, so the file never ends in a torn record.

    Raises:
        WriteFailure: the disk refused it (the file is as it was).
    """
    path = Path(path)
    data = memoryview(content.encode() if isinstance(content, str) else content)
    with writing(path, len(data)), open(path, "ab", buffering=0) as f:
        end = f.seek(0, os.SEEK_END)
        try:
            while data:
                data = data[f.write(data):]
        except BaseException:
            f.truncate(end)
            raise
