"""A real full disk: every file a command writes meets a small tmpfs (mounted as root, skipped otherwise) and
ends in one line naming the file, its directory and the bytes it needed, exit code 1, the previous file intact
and no temporary file left (peffnet.files; docs/training.md, "Write failures")."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peffnet.checkpoint import load_checkpoint, save_checkpoint
from peffnet.cli import main
from peffnet.errors import WriteFailure
from peffnet.files import append_file, write_file
from peffnet.training.metrics import MetricsLogger
from train_helpers import tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")

LINE = re.compile(r"peffnet (?P<command>\w+): error: cannot write (?P<file>\S+) in (?P<dir>\S+): (?P<reason>[^(]+) "
                  r"\(it needs (?:about )?(?P<needs>[\d,]+) bytes; (?P<free>[\d,]+) free there\)(?:; .+)?\n")
PAGE = 4096


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``small_disk("3m")``: a new tmpfs of that size (mounted as root), unmounted when the test ends."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path, leave: int = 0) -> None:
    """Take all the free room of ``disk`` but ``leave`` bytes (whole pages)."""
    room = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - leave
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(room, 0))
    assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize <= max(leave, 0) + PAGE


def files_of(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` but the filler, by relative path."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "filler"}


def temporary_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob(".*") if p.name.endswith(".tmp") or ".tmp" in p.suffixes]


def check_line(err: str, command: str, file: str, directory: Path, at_least: int) -> re.Match:
    """``err`` is the one line of a write failure of ``file`` in ``directory`` that needed >= ``at_least``."""
    match = LINE.fullmatch(err)
    assert match, err
    assert (match["command"], match["file"], match["dir"]) == (command, file, str(directory)), err
    assert int(match["needs"].replace(",", "")) >= at_least and "Traceback" not in err
    return match


def test_train_into_a_3_mib_disk_is_one_line_and_exit_1(small_disk: Callable[[str], Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """As a user meets it: ``peffnet train`` into a 3 MiB tmpfs, where no checkpoint fits (the command's exit
    status is what ``main`` returns: tests/test_cli_profile.py runs a fresh ``python -m peffnet``)."""
    disk = small_disk("3m")
    capsys.readouterr()
    assert main(tiny_args(disk / "run")) == 1
    err = capsys.readouterr().err
    match = check_line(err, "train", "checkpoint.pt", disk / "run", 10**6)
    assert match["reason"] == "No space left on device"
    assert err.endswith("; the earlier checkpoints are intact: no checkpoint yet\n")
    assert temporary_files(disk) == [] and not (disk / "run" / "checkpoint.pt").exists()


def test_a_full_disk_keeps_the_last_checkpoint(small_disk: Callable[[str], Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A run whose disk fills after its first checkpoint: resuming it for a second epoch stops at that
    epoch's checkpoint with one line; the first checkpoint is intact and loads, the logs hold whole lines."""
    disk = small_disk("160m")  # a run writes its last checkpoint twice: the epoch's, then the final one
    run = disk / "run"
    assert main(tiny_args(run)) == 0
    fill(disk, leave=16 * PAGE)
    before = files_of(run)
    capsys.readouterr()
    assert main(tiny_args(run, epochs=2)) == 1
    err = capsys.readouterr().err
    check_line(err, "train", "checkpoint.pt", run, 10**6)
    assert err.endswith(f"; the earlier checkpoints are intact: {run / 'checkpoint.pt'} (step 4)\n")
    assert files_of(run)["checkpoint.pt"] == before["checkpoint.pt"]
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4 and temporary_files(disk) == []
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # whole lines
    assert (records[-1]["kind"], records[-1]["step"]) == ("epoch", 8)


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_export_into_a_full_disk_leaves_the_previous_model(fmt: str, tiny_parent: Path,
                                                           small_disk: Callable[[str], Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    disk = small_disk("3m")
    target = disk / f"model.{fmt}"
    target.write_bytes(b"the previous model")
    assert main(["export", str(tiny_parent), "--format", fmt, "--out", str(target)]) == 1
    check_line(capsys.readouterr().err, "export", target.name, disk, 10**6)
    assert target.read_bytes() == b"the previous model" and temporary_files(disk) == []
    assert sorted(p.name for p in disk.iterdir()) == [target.name]


WRITERS: dict[str, tuple[str, Callable[[Path, MetricsLogger], None]]] = {
    "summary": ("summary.json", lambda run, _: write_file(run / "summary.json", json.dumps([0.5] * 10**5))),
    "checkpoint": ("checkpoint.pt", lambda run, _: save_checkpoint(run / "checkpoint.pt", {"w": bytes(10**6)})),
    "metrics": ("metrics.jsonl", lambda _, logger: logger.log({"kind": "step", "step": 3, "note": "x" * 2 * PAGE})),
    "tensorboard": ("events.out.tfevents.", lambda _, logger: logger.tb.add_scalars(
        3, {f"tag{i}": float(i) for i in range(1000)})),
    "appended line": ("log.txt", lambda run, _: append_file(run / "log.txt", "x" * 2 * PAGE + "\n")),
}


@pytest.mark.parametrize("kind", WRITERS)
def test_every_writer_fails_whole_on_a_full_disk(kind: str, small_disk: Callable[[str], Path]) -> None:
    """Each kind of file a command writes, written again into a full disk after a first version fitted: a
    WriteFailure naming it, its directory and the bytes it needed; every file as before; no temporary file.
    TensorBoard events included: they are written when logged, not by a thread whose failure comes later."""
    disk = small_disk("1m")
    run = disk / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}\n")
    save_checkpoint(run / "checkpoint.pt", {"w": bytes(100)})
    (run / "log.txt").write_text("first line\n")
    logger = MetricsLogger(run, enabled=True)
    for step in (1, 2):
        logger.log({"kind": "step", "epoch": 1, "step": step, "loss": 2.0 / step, "lr": 0.1, "time_s": step})
    fill(disk)
    before = files_of(run)
    name, write = WRITERS[kind]
    with pytest.raises(WriteFailure) as failure:
        write(run, logger)
    check_line(f"peffnet test: error: {failure.value}\n", "test", failure.value.path.name, run
               if failure.value.path.parent == run else run / "tb", 2 * PAGE)
    assert failure.value.path.name.startswith(name)
    assert files_of(run) == before and temporary_files(disk) == []
