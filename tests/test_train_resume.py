"""Nothing lost: SIGKILL mid-epoch then --resume equals an uninterrupted run; NaN loss stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import COMMAND_ENV
from peffnet.checkpoint import load_checkpoint
from peffnet.cli import main
from train_helpers import final_weights, max_abs_diff, tiny_args

STEPS_PER_EPOCH = 8  # 64 images in global batches of 8


def run_args(out: Path, *extra: str) -> list[str]:
    return tiny_args(out, "--subset", "64", "--checkpoint-every", "3", *extra, epochs=2)


def checkpoint_step(path: Path) -> int | None:
    """The step of the checkpoint at ``path`` (None while there is none yet)."""
    try:
        return load_checkpoint(path)["step"]
    except Exception:  # noqa: BLE001 - not written yet
        return None


@pytest.mark.slow  # two fresh Python processes importing torch: ~40 s on a busy 2-core machine
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path: Path) -> None:
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    assert main(run_args(reference)) == 0

    proc = subprocess.Popen([sys.executable, "-m", "peffnet", *run_args(victim)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=COMMAND_ENV)
    deadline = time.monotonic() + 300
    while (checkpoint_step(victim / "checkpoint.pt") or 0) < STEPS_PER_EPOCH + 1:  # a mid-epoch-2 checkpoint
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(victim / "checkpoint.pt")["step"]
    assert killed_at % STEPS_PER_EPOCH != 0, "the kill was meant to land mid-epoch"

    assert main(run_args(victim, "--resume")) == 0
    for key in ("model", "averaged"):
        assert max_abs_diff(final_weights(reference, key), final_weights(victim, key)) < 1e-6, key
    records = [json.loads(line) for line in (victim / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    ref_summary = json.loads((reference / "summary.json").read_text())
    summary = json.loads((victim / "summary.json").read_text())
    assert (summary["top1"], summary["config_hash"]) == (ref_summary["top1"], ref_summary["config_hash"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    # an absurd learning rate: step 1 is finite, its update blows the weights up, step 2's loss is not finite
    code = main(tiny_args(out, "--lr", "1e30", "--checkpoint-every", "1", "--warmup-epochs", "0"))
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("peffnet train: error: loss is ") and err.count("\n") == 1, err
    assert "at step 2 (epoch 1)" in err and f"the last finite checkpoint is {out / 'checkpoint.pt'} (step 1)" in err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 1
    assert not (out / "summary.json").exists()
