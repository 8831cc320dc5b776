"""Preemption: a stop signal finishes the step and checkpoints; one command line starts, resumes and extends a
run; a diverged state is never checkpointed and the last finite checkpoint resumes with another lr; one writer
per run directory. (torchrun: tests/test_ddp.py; checkpoint files: tests/test_checkpoint.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import COMMAND_ENV
from peffnet.checkpoint import load_checkpoint
from peffnet.cli import main
from peffnet.training.lock import LOCK_NAME, RunLock
from train_helpers import after_update, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 4  # per epoch: 32 images in global batches of 8


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-epoch tiny run."""
    from conftest import torch_threads

    out = tmp_path_factory.mktemp("reference") / "run"
    with torch_threads(1):
        assert main(tiny_args(out, epochs=2)) == 0
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = (load_checkpoint(d / "checkpoint.pt") for d in (a, b))  # each file read once
    for key in ("model", "averaged"):
        wa, wb = first[key], second[key]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{key} weights differ"


def send(*signums: int) -> Callable[[object], None]:
    """An action that sends this process ``signums``, as a scheduler or Ctrl-C would."""
    def action(_: object) -> None:
        for signum in signums:
            os.kill(os.getpid(), signum)
    return action


@pytest.mark.parametrize("signum, code, at", [
    (signal.SIGTERM, 143, 3),
    pytest.param(signal.SIGINT, 130, STEPS, marks=pytest.mark.slow),  # the same path at other points and signals
    pytest.param(signal.SIGUSR1, 138, STEPS + 2, marks=pytest.mark.slow)])
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_the_same_command_resumes(
        reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], signum: int, code: int,
        at: int) -> None:
    """Mid-epoch 1, at the end of epoch 1 (after its evaluation), mid-epoch 2: the step in progress (its
    update done) finishes, the checkpoint holds it, one line says where; the same command line ends bitwise at
    the reference."""
    out, handler = tmp_path / "run", signal.getsignal(signum)
    with after_update(at, send(signum)):
        assert main(tiny_args(out, epochs=2)) == code
    err = capsys.readouterr().err.splitlines()
    name = signal.Signals(signum).name
    where = "end of epoch 1/2" if at == STEPS else f"epoch {(at - 1) // STEPS + 1}/2"
    assert err[-2:] == [f"{name} received: stopping after this step, with a checkpoint",
                        f"peffnet train: stopped by {name} after step {at} ({where}); checkpoint "
                        f"{out / 'checkpoint.pt'} (step {at}): the same command resumes it"]
    assert load_checkpoint(out / "checkpoint.pt")["step"] == at
    epochs_logged = [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                     if r["kind"] == "epoch"]
    assert epochs_logged == [1] * (at >= STEPS)
    assert signal.getsignal(signum) == handler  # restored
    assert main(tiny_args(out, epochs=2)) == 0
    assert "resuming from" in capsys.readouterr().out
    assert_same_weights(reference, out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 2 * STEPS + 1))


def test_a_second_sigint_stops_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with after_update(2, send(signal.SIGINT, signal.SIGINT)):
        assert main(tiny_args(tmp_path / "run", "--checkpoint-every", "1")) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "peffnet train: interrupted"
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1  # step 2 was abandoned


@pytest.mark.slow  # a fresh `python -m peffnet` process
def test_sigterm_from_outside_exits_143_within_the_grace_period(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "peffnet", *tiny_args(out, "--subset", "128", epochs=2)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**COMMAND_ENV, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").exists() or '"step": 2,' not in (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == 143, err
    assert took < 30, f"{took:.1f} s: longer than the default grace period of Kubernetes and SLURM"
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert err.splitlines()[-1].startswith(f"peffnet train: stopped by SIGTERM after step {step} (")
    assert not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------ one command line for every start


def test_resume_modes(reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    assert main(tiny_args(empty, "--resume")) == 2  # yes: there must be a checkpoint
    assert f"--resume yes: {empty} holds no checkpoint to continue from" in capsys.readouterr().err
    assert main(tiny_args(reference, "--resume", "no", epochs=2)) == 2  # no: never continue a run
    assert "--resume no never continues one" in capsys.readouterr().err
    assert main(tiny_args(tmp_path / "bad", "--resume", "maybe")) == 2
    assert "resume must be one of auto, yes, no, got 'maybe'" in capsys.readouterr().err


@pytest.mark.slow  # two more tiny runs
def test_a_finished_run_goes_on_to_more_epochs(reference: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """With --recipe-epochs 0 the schedule does not depend on the run's length: 1 epoch, then the same command
    with --epochs 2, equals 2 epochs at once, bit for bit."""
    out = tmp_path / "run"
    assert main(tiny_args(out, epochs=1)) == 0
    assert (out / "summary.json").exists()
    assert main(tiny_args(out, epochs=2)) == 0
    assert "peffnet train: epochs 1 -> 2" in capsys.readouterr().out
    assert_same_weights(reference, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["resumes"] == [{"step": STEPS, "changed": {"epochs": [1, 2]}}]


def test_a_run_whose_schedule_depends_on_its_length_says_why_it_cannot_go_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["--subset", "16", "--recipe-epochs", "350"]
    assert main(tiny_args(out, *args, epochs=1)) == 0
    capsys.readouterr()
    assert main(tiny_args(out, *args, epochs=2)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained for 1 epoch(s) and cannot go on to 2: warm-up, lr decay" in err
    assert "--recipe-epochs 0 makes a run extendable" in err


# ------------------------------------------------------------------ never keep a bad state


@pytest.mark.slow  # two more tiny runs
def test_diverged_weights_are_not_checkpointed_and_the_last_finite_one_resumes_with_a_lower_lr(
        reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Step 3's update makes a weight NaN while its loss is finite (an overflowing update): the checkpoint of
    step 3 is refused, the run stops naming step 2's; the same command with half the lr resumes from it."""
    out = tmp_path / "run"

    def poison(optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            optimizer.param_groups[0]["params"][0].view(-1)[0] = float("nan")

    with after_update(3, poison):
        assert main(tiny_args(out, "--checkpoint-every", "1", epochs=2)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("peffnet train: error: non-finite model weights (")
    assert f"not checkpointed at step 3 (epoch 1); training stopped; the last finite checkpoint is {out}" in err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2  # finite (load_checkpoint checks)

    assert main(tiny_args(out, "--checkpoint-every", "1", "--lr", "0.0015", epochs=2)) == 0
    assert "lr 0.003 -> 0.0015 (the schedule from here on x 0.5)" in capsys.readouterr().out
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())
           if r["kind"] == "step"}
    resumed = {r["step"]: r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "step"}
    assert resumed[2] == lrs[2] and all(resumed[s] == pytest.approx(lrs[s] / 2) for s in range(3, 2 * STEPS + 1))
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["config"]["lr"] == 0.0015
    assert state["progress"]["resumes"] == [{"step": 2, "changed": {"lr": [0.003, 0.0015]}}]


# ------------------------------------------------------------------ one writer per run directory


def test_a_second_run_on_a_directory_in_use_exits_2_naming_the_holder(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    holder = RunLock(out)
    assert holder.acquire() == []
    try:
        assert main(tiny_args(out)) == 2
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out} is in use by another run: pid {os.getpid()} on host " in err
    assert socket.gethostname() in err and "wait for it to end or choose another --out" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "config.yaml").exists()


def test_a_stale_lock_is_taken_over_and_orphan_temporary_files_removed(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                             "started": "2026-01-01 00:00:00 UTC", "command": "peffnet train"}))
    (out / ".checkpoint.pt.x1y2.tmp").write_bytes(b"\0" * 1000)
    assert main(tiny_args(out, "--subset", "16")) == 0
    err = capsys.readouterr().err
    assert f"took over {out / LOCK_NAME} from pid {dead.pid} on host {socket.gethostname()}" in err
    assert "which is no longer running" in err
    assert "removed 1 temporary file(s) of a checkpoint write that was interrupted: .checkpoint.pt.x1y2.tmp" in err
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_NAME).exists()


HOLDER = """
import os, sys, time
from peffnet.training.lock import RunLock
RunLock(sys.argv[1]).acquire()
ready, tell = os.pipe()
worker = os.fork()
if worker == 0:  # a worker that lingers, once it has done what a fork does first
    os.write(tell, b"x")
    time.sleep(120)
    os._exit(0)
os.read(ready, 1)
print(worker, flush=True)
time.sleep(120)
"""


@pytest.mark.slow  # a fresh Python process that imports peffnet
def test_a_forked_child_does_not_keep_the_lock_of_a_dead_run(tmp_path: Path) -> None:
    """DataLoader workers are forked from the run; one that outlives a killed run must not hold its lock (a
    flock lasts while any process keeps the descriptor open). A real run process takes the lock, forks a
    worker and is killed (SIGKILL: its lock file stays)."""
    run = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                           env=COMMAND_ENV)
    worker = 0
    try:
        worker = int(run.stdout.readline())
        run.kill()
        run.wait()
        lock = RunLock(tmp_path)
        notes = lock.acquire()
        assert notes and notes[0].startswith(f"took over {tmp_path / LOCK_NAME} from pid {run.pid}")
        lock.release()
    finally:
        run.kill()
        run.wait()
        run.stdout.close()
        if worker:
            os.kill(worker, signal.SIGKILL)
