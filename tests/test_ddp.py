"""Data parallelism: `torchrun --nproc_per_node 2 -m peffnet train` on CPU (gloo, loopback) gives the
same result as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from peffnet.cli import main
from train_helpers import final_weights, max_abs_diff, tiny_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh Python processes importing torch: ~40 s on a busy 2-core machine
def test_two_processes_equal_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(tiny_args(one, epochs=2)) == 0  # global batch 8 in one pass
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "peffnet", *tiny_args(two, epochs=2)]  # 4 images per process and step
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("averaged weights") == 1  # only rank 0 reports
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

    from peffnet.training.loop import _no_sync

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(torch.nn.Linear(2, 2))
        for net in (ddp, torch.compile(ddp)):  # compiling is lazy: nothing is compiled here
            with _no_sync(net):
                assert not ddp.require_backward_grad_sync
            assert ddp.require_backward_grad_sync
    finally:
        dist.destroy_process_group()
