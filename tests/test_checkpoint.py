"""Checkpoints: atomic writes, validated reads, models rebuilt from them; a run's last K with checksums, what
a kill or a full disk leaves."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import random
import re
import tempfile
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import peffnet.checkpoint as checkpoint_module
import peffnet.files as files_module
from conftest import torch_threads
from peffnet.checkpoint import (
    FORMAT,
    CheckpointDir,
    load_checkpoint,
    load_weights,
    model_from_checkpoint,
    read_manifest,
    save_checkpoint,
)
from peffnet.errors import ConfigError, RunFailure
from peffnet.models import ModelConfig, build, preset


def tiny_config(num_classes: int = 3) -> ModelConfig:
    """B0 with GN at a quarter of its width and depth (124 k parameters: checkpoints of 1 MB, not 32)."""
    return dataclasses.replace(preset("efficientnet_b0", norm="gn", num_classes=num_classes, in_chans=1),
                               width=0.25, depth=0.25)


def tiny_state() -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build(cfg)
    averaged = {k: v * 0.5 for k, v in model.state_dict().items()}
    state = {"format": FORMAT, "model_config": dataclasses.asdict(cfg), "model": model.state_dict(),
             "averaged": averaged, "epoch": 1, "step": 10, "train_resolution": 32, "num_classes": 3}
    return model, state


def test_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    model, state = tiny_state()
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, state)
    state["step"] = 11
    save_checkpoint(path, state)
    assert os.listdir(path.parent) == ["checkpoint.pt"]  # no temporary file left behind
    loaded = load_checkpoint(path)
    assert loaded["step"] == 11
    rebuilt, _ = model_from_checkpoint(path)
    assert not rebuilt.training and rebuilt.cfg.in_chans == 1
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, state["averaged"][k])
    live, _ = model_from_checkpoint(loaded, averaged=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in live.state_dict().items())


def test_failed_write_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    _, state = tiny_state()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises, the old file must survive
        save_checkpoint(path, {**state, "bad": lambda: None})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.pt"]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "not a peffnet checkpoint .not a file of torch.save"),
    (b"certainly not a zip file\n", "not a peffnet checkpoint .not a file of torch.save"),
    (bytes(random.Random(0).randrange(256) for _ in range(4096)), "not a peffnet checkpoint .not a file of torch.save"),
    ({"some": "dict"}, "not a peffnet checkpoint"),
    ({"model": Fraction(1, 3)}, "not a peffnet checkpoint .it holds Python objects"),
    ({"format": FORMAT}, "missing model_config"),
])
def test_unreadable_checkpoints_are_one_line_errors(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "checkpoint.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=message) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    _, state = tiny_state()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match="cannot read checkpoint .*: damaged .PytorchStreamReader"):
        load_checkpoint(path)


def test_mismatched_weights() -> None:
    model, state = tiny_state()
    other = build(tiny_config(num_classes=5))
    with pytest.raises(ConfigError, match="classifier.weight has shape"):
        load_weights(other, state["model"])
    with pytest.raises(ConfigError, match="1 missing"):
        load_weights(model, {k: v for k, v in state["model"].items() if k != "classifier.bias"})


@pytest.mark.parametrize("norm", ["bn", "lnpn"])
def test_a_v1_checkpoint_loads_with_todays_keys(tmp_path: Path, norm: str) -> None:
    """Before the conv and norm of ConvNormAct had names, their keys were indices (``stem.0.weight``)."""
    from peffnet.checkpoint import V1

    torch.manual_seed(0)
    model = build(preset("g16_efficientnet_b0", norm=norm, num_classes=10))
    old = {re.sub(r"(stem|expand|spatial|project|head)\.conv\.", r"\1.0.", k): v for k, v in model.state_dict().items()}
    old = {re.sub(r"(stem|expand|spatial|project|head)\.norm\.", r"\1.1.", k): v for k, v in old.items()}
    assert "stem.0.weight" in old and "stages.1.0.spatial.1.weight" in old and "stages.0.0.se.reduce.weight" in old
    state = {"format": V1, "model_config": dataclasses.asdict(model.cfg), "model": old, "averaged": old,
             "epoch": 1, "step": 1, "train_resolution": 32, "num_classes": 10}
    save_checkpoint(tmp_path / "v1.pt", state)
    rebuilt, loaded = model_from_checkpoint(tmp_path / "v1.pt")
    assert loaded["format"] == FORMAT and list(loaded["model"]) == list(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x))
    save_checkpoint(tmp_path / "v0.pt", {**state, "format": "peffnet-checkpoint-v0"})
    with pytest.raises(ConfigError, match="not a peffnet checkpoint .format 'peffnet-checkpoint-v0'; this peffnet"):
        load_checkpoint(tmp_path / "v0.pt")
# ------------------------------------------------------------------ a run's checkpoints: rotation, checksums


def saved(directory: Path, steps: list[int], keep: int = 2) -> tuple[CheckpointDir, dict]:
    """A run directory whose checkpoints were saved at ``steps`` (tiny states)."""
    _, state = tiny_state()
    checkpoints = CheckpointDir(directory, keep)
    for step in steps:
        checkpoints.save({**state, "step": step})
    return checkpoints, state


def sha256sum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_the_last_k_are_kept_with_their_checksums(tmp_path: Path, keep: int) -> None:
    saved(tmp_path, [3, 6, 8, 9], keep)
    expected = ["checkpoint.pt", "checkpoint-step8.pt", "checkpoint-step6.pt"][:keep]
    assert sorted(os.listdir(tmp_path)) == sorted([*expected, "checkpoints.json"])
    records = json.loads((tmp_path / "checkpoints.json").read_text())["checkpoints"]
    assert [r["file"] for r in records] == expected and [r["step"] for r in records] == [9, 8, 6][:keep]
    for r in records:
        assert r["sha256"] == sha256sum(tmp_path / r["file"]) and r["bytes"] == (tmp_path / r["file"]).stat().st_size
        assert load_checkpoint(tmp_path / r["file"])["step"] == r["step"]


def test_a_save_at_the_same_step_replaces_the_newest(tmp_path: Path) -> None:
    saved(tmp_path, [4, 8, 8])
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-step4.pt", "checkpoint.pt", "checkpoints.json"]


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":  # 4 KiB of random bytes in the middle
        middle = len(data) // 2
        path.write_bytes(data[:middle] + os.urandom(4096) + data[middle + 4096:])
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(os.urandom(len(data)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "nan":  # a well-formed checkpoint of non-finite weights (as older versions could write)
        state = torch.load(path, weights_only=True)
        state["model"]["classifier.weight"][0, 0] = float("nan")
        torch.save(state, path)


@pytest.mark.parametrize("how", ["garbage", "truncated", "random", "empty", "nan"])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(tmp_path: Path, how: str) -> None:
    saved(tmp_path, [4, 8])
    damage(tmp_path / "checkpoint.pt", how)
    with pytest.raises(ConfigError, match=f"checkpoint {tmp_path / 'checkpoint.pt'} (is damaged|holds non-finite)"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    state, path, notes = CheckpointDir(tmp_path).recover()
    assert (state["step"], path) == (4, tmp_path / "checkpoint-step4.pt")
    assert len(notes) == 1 and str(tmp_path / "checkpoint.pt") in notes[0]
    assert notes[0].endswith("; kept as checkpoint.pt.corrupt")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-step4.pt", "checkpoint.pt.corrupt", "checkpoints.json"]
    checkpoints = CheckpointDir(tmp_path)  # and saving goes on from there
    checkpoints.recover()
    checkpoints.save({**state, "step": 5})
    assert [r["step"] for r in read_manifest(tmp_path)] == [5, 4]


def test_no_usable_checkpoint_is_an_error_that_renames_nothing(tmp_path: Path) -> None:
    saved(tmp_path, [4, 8])
    for name in ("checkpoint.pt", "checkpoint-step4.pt"):
        damage(tmp_path / name, "garbage")
    with pytest.raises(ConfigError, match=f"no usable checkpoint in {tmp_path}: .*; move the files away") as err:
        CheckpointDir(tmp_path).recover()
    assert "\n" not in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-step4.pt", "checkpoint.pt", "checkpoints.json"]


def test_a_checkpoint_without_recorded_checksums_still_loads(tmp_path: Path) -> None:
    """A run directory of an earlier version (no checkpoints.json): loaded, checked, then recorded."""
    _, state = tiny_state()
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    loaded, path, notes = CheckpointDir(tmp_path).recover()
    assert (loaded["step"], path, notes) == (10, tmp_path / "checkpoint.pt", [])
    assert read_manifest(tmp_path)[0]["sha256"] == sha256sum(tmp_path / "checkpoint.pt")


def test_orphan_temporary_files_are_removed(tmp_path: Path) -> None:
    saved(tmp_path, [4])
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"\0" * 2_000_000)
    (tmp_path / ".checkpoints.json.def.tmp").write_text("{")
    assert CheckpointDir(tmp_path).remove_orphans() == [".checkpoint.pt.abc123.tmp (2.0 MB)",
                                                        ".checkpoints.json.def.tmp (0.0 MB)"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "checkpoints.json"]


class Killed(BaseException):
    """The process dies here."""


@pytest.mark.parametrize("death", range(1, 10))
def test_a_kill_at_any_point_of_a_save_leaves_a_verifiable_directory(tmp_path: Path, death: int,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Die at the n-th file operation of the third save (the writes, renames and deletions of the rotation):
    what is left recovers to the second or the third checkpoint, and every file left verifies."""
    checkpoints, state = saved(tmp_path, [4, 8])
    calls = []

    def dies(real: object) -> object:
        def operation(*args: object, **kwargs: object) -> object:
            calls.append(1)
            if len(calls) == death:
                raise Killed
            return real(*args, **kwargs)
        return operation

    for name in ("replace", "unlink", "fsync"):
        monkeypatch.setattr(checkpoint_module.os, name, dies(getattr(os, name)))
    monkeypatch.setattr(checkpoint_module.Path, "unlink", dies(Path.unlink))
    with pytest.raises(Killed):
        checkpoints.save({**state, "step": 12})
    monkeypatch.undo()
    for orphan in tmp_path.glob(".*.tmp"):  # what a kill leaves (a Python exception still cleans it up)
        orphan.unlink()
    recovered, path, notes = CheckpointDir(tmp_path).recover()
    assert recovered["step"] in (8, 12) and notes == []
    for r in read_manifest(tmp_path):
        assert sha256sum(tmp_path / r["file"]) == r["sha256"]


def dev_full_for_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoint data goes to /dev/full: every write fails with ENOSPC, as on a full disk."""
    real = tempfile.mkstemp

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, path = real(*args, **kwargs)
        if kwargs.get("prefix", "").startswith(".checkpoint.pt."):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, path

    monkeypatch.setattr(files_module.tempfile, "mkstemp", mkstemp)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_line_with_the_size_needed_and_the_earlier_checkpoints_intact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoints, state = saved(tmp_path, [4])
    before = sha256sum(tmp_path / "checkpoint.pt")
    dev_full_for_checkpoints(monkeypatch)
    with pytest.raises(RunFailure) as err:
        checkpoints.save({**state, "step": 8})
    size = f"{(tmp_path / 'checkpoint.pt').stat().st_size:,} bytes"  # the same state at another step
    assert str(err.value).startswith(f"cannot write checkpoint.pt in {tmp_path}: No space left on device "
                                     f"(it needs {size}; ")
    assert str(err.value).endswith(f"free there); the earlier checkpoints are intact: {tmp_path / 'checkpoint.pt'} "
                                   f"(step 4)")
    assert "\n" not in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "checkpoints.json"]
    assert sha256sum(tmp_path / "checkpoint.pt") == before and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4


def test_an_unwritable_directory_is_one_line_with_the_size_needed(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """(chmod does not stop root, so the refusal is what mkstemp raises in a read-only directory.)"""
    _, state = tiny_state()

    def refuse(*args: object, dir: str = "", **kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    monkeypatch.setattr(files_module.tempfile, "mkstemp", refuse)
    with pytest.raises(RunFailure, match=r"cannot write checkpoint.pt in .*: Permission denied \(it needs "
                                         r"[\d,]+ bytes.*\); the earlier checkpoints are intact: no checkpoint yet"):
        CheckpointDir(tmp_path).save(state)


def test_disk_full_during_training_exits_1_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The third checkpoint of a run cannot be written: exit 1, one line, the first two intact."""
    from peffnet.cli import main
    from train_helpers import tiny_args

    real, writes = checkpoint_module.CheckpointDir.save, []

    def save(self: CheckpointDir, state: dict) -> Path:
        writes.append(1)
        if len(writes) == 3:
            dev_full_for_checkpoints(monkeypatch)
        return real(self, state)

    monkeypatch.setattr(checkpoint_module.CheckpointDir, "save", save)
    with torch_threads(1):
        assert main(tiny_args(tmp_path, "--checkpoint-every", "1")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"peffnet train: error: cannot write checkpoint.pt in {tmp_path}")
    assert "No space left on device" in err and "the earlier checkpoints are intact" in err
    assert [r["step"] for r in read_manifest(tmp_path)] == [2, 1]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2 and not list(tmp_path.glob(".*.tmp"))
