"""User-facing errors: the CLI turns these into one line on stderr; exit code 2 for bad input, 1 for a run
or command that could not go on."""

from pathlib import Path


class ConfigError(ValueError):
    """Bad input from the user (model name, sizes, paths, files). The message is one line."""


class RunFailure(RuntimeError):
    """A run could not go on (a non-finite loss, a file that cannot be written); its checkpoints are intact.
    The message is one line and names the last usable checkpoint; exit code 1."""


class WriteFailure(RunFailure):
    """A file could not be written: disk full, quota, read-only file system, no permission (``reason``).
    One line naming the file, its directory, the bytes the write ``needs`` (``about``: an estimate) and those
    ``free`` there (``None``: unknown), and a ``note`` on what is intact; exit code 1 (``peffnet.files``)."""

    def __init__(self, path: Path, reason: str, needs: int, free: int | None, about: bool = False,
                 note: str = "") -> None:
        self.path, self.reason, self.needs, self.free, self.about, self.note = path, reason, needs, free, about, note
        room = "" if free is None else f"; {free:,} free there"
        super().__init__(f"cannot write {path.name} in {path.parent}: {reason} (it needs {'about ' if about else ''}"
                         f"{needs:,} bytes{room}){f'; {note}' if note else ''}")

    def noting(self, note: str) -> "WriteFailure":
        """The same failure with ``note`` (what is intact) at the end of its line."""
        return WriteFailure(self.path, self.reason, self.needs, self.free, self.about, note)
