"""Data parallelism: `torchrun --nproc_per_node 2 -m peffnet train` on CPU (gloo, loopback) gives the
same result as one process with the same global batch; a SIGTERM stops every rank at the same step, and a
worker killed under `torchrun --max-restarts` is restarted into the same weights."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from conftest import COMMAND_ENV
from peffnet.checkpoint import load_checkpoint, read_manifest
from peffnet.cli import main
from peffnet.training.lock import LOCK_NAME
from train_helpers import final_weights, max_abs_diff, tiny_args

TIMEOUT_S = 600  # one torchrun of two processes importing torch: ~20-40 s on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, *extra: str, restarts: int = 0) -> subprocess.Popen:
    """`torchrun --nproc_per_node 2 -m peffnet train` of the tiny 2-epoch run (4 images per process and step)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--max-restarts", str(restarts), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "peffnet", *tiny_args(out, *extra, epochs=2)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**COMMAND_ENV, "OMP_NUM_THREADS": "1"})


def finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=TIMEOUT_S)
    return output


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, step: int) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not (records := read_manifest(out)) or records[0]["step"] < step:
        assert proc.poll() is None, finish(proc)[-3000:]
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)


def same_weights(a: Path, b: Path) -> bool:
    """Whether two runs' checkpoints hold bit-identical live and averaged weights (each file read once)."""
    first, second = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    return all(first[key].keys() == second[key].keys() and all(torch.equal(v, second[key][k])
                                                              for k, v in first[key].items())
               for key in ("model", "averaged"))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An uninterrupted torchrun of two processes, and its output."""
    out = tmp_path_factory.mktemp("ddp") / "two"
    proc = torchrun(out)
    output = finish(proc)
    assert proc.returncode == 0, output[-3000:]
    return out, output


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path, two_processes: tuple[Path, str]) -> None:
    one, (two, output) = tmp_path / "one", two_processes
    assert main(tiny_args(one, epochs=2)) == 0  # global batch 8 in one pass
    assert output.count("averaged weights") == 1  # only rank 0 reports
    for key in ("model", "averaged"):
        assert max_abs_diff(final_weights(one, key), final_weights(two, key)) < 1e-5, key
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert (s2["world_size"], s2["micro_batch_size"], s2["steps"]) == (2, 4, s1["steps"])
    assert (s2["top1"], s2["top5"]) == (s1["top1"], s1["top5"])
    assert s2["config_hash"] == s1["config_hash"]  # micro-batch size is an execution detail


def test_no_sync_reaches_a_compiled_ddp_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Micro-batches before the last skip DDP's all-reduce, also when torch.compile wraps the DDP module."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from peffnet.runtime.step import no_sync

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(torch.nn.Linear(2, 2))
        for net in (ddp, torch.compile(ddp)):  # compiling is lazy: nothing is compiled here
            with no_sync(net):
                assert not ddp.require_backward_grad_sync
            assert ddp.require_backward_grad_sync
    finally:
        dist.destroy_process_group()
@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_the_same_command_resumes(
        tmp_path: Path, two_processes: tuple[Path, str]) -> None:
    """torchrun forwards SIGTERM to both ranks; they agree on the step to stop at (an all-reduce after every
    step), rank 0 writes its checkpoint, both exit well within torchrun's 30 s before SIGKILL."""
    out, deadline = tmp_path / "run", time.monotonic() + TIMEOUT_S
    proc = torchrun(out)
    while not (out / "metrics.jsonl").exists() or '"step": 2,' not in (out / "metrics.jsonl").read_text():
        assert proc.poll() is None, finish(proc)[-3000:]
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output = finish(proc)
    assert time.monotonic() - sent < 30, output[-3000:]
    stopped = [line for line in output.splitlines() if line.startswith("peffnet train: stopped by SIGTERM")]
    assert len(stopped) == 1, output[-3000:]  # rank 0 reports
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert stopped[0].startswith(f"peffnet train: stopped by SIGTERM after step {step} ("), output[-3000:]
    assert not (out / LOCK_NAME).exists()

    proc = torchrun(out)
    output = finish(proc)
    assert proc.returncode == 0, output[-3000:]
    assert f"resuming from {out / 'checkpoint.pt'} (step {step})" in output
    assert same_weights(two_processes[0], out)


@pytest.mark.slow
def test_a_worker_killed_under_torchrun_max_restarts_ends_with_the_uninterrupted_weights(
        tmp_path: Path, two_processes: tuple[Path, str]) -> None:
    """SIGKILL rank 0 (the lock's holder) after its third checkpoint: torchrun stops the other rank and starts
    both again with the same command line, which takes over the stale lock and resumes (``--resume auto``)."""
    out = tmp_path / "run"
    proc = torchrun(out, "--checkpoint-every", "1", restarts=2)
    wait_for_checkpoint(proc, out, 3)
    os.kill(json.loads((out / LOCK_NAME).read_text())["pid"], signal.SIGKILL)
    output = finish(proc)
    assert proc.returncode == 0, output[-3000:]
    assert "peffnet train: took over" in output and "which is no longer running" in output
    assert "resuming from" in output
    assert same_weights(two_processes[0], out)


def test_the_process_group_is_joined_with_a_timeout_and_a_store_of_this_restart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """init_process_group gets --dist-timeout; under torchrun's agent store, keys are prefixed per restart (a
    restarted worker must not read the address a dead peer published in an earlier restart)."""
    import torch.distributed as dist

    from peffnet.training import distributed

    joined = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: joined.update(kwargs, backend=backend))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    distributed.setup("cpu", 42)
    assert joined["timeout"] == timedelta(seconds=42) and joined["store"] is None and joined["backend"] == "gloo"

    agent_store = dist.HashStore()
    monkeypatch.setattr(dist, "TCPStore", lambda *args, **kwargs: agent_store)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    distributed.setup("cpu", 42)
    joined["store"].set("rank_0", "address")
    assert agent_store.get("peffnet/restart-3/rank_0") == b"address"
