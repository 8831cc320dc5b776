"""scripts/device_check.py, the GPU check, dry-run on the CPU (`--device cpu --quick`): every check runs, so the
script cannot rot between the times a GPU is lent; what it leaves is what a borrowed machine returns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "device_check.py"
CHECKS = ["train_steps", "fold", "sync_free", "checkpoint_to_cpu", "export", "loader", "speed_train", "speed_infer",
          "compile", "ddp"]


def repository_state() -> str:
    """What git sees changed in the repository (empty outside a git checkout: nothing to compare)."""
    proc = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all"],
                          capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""


def dry_run(out: Path, tmp: Path, *extra: str) -> subprocess.Popen:
    tmp.mkdir(exist_ok=True)
    env = {"OMP_NUM_THREADS": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(tmp),
           **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}
    return subprocess.Popen([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow  # every check at tiny sizes: about 1-2 minutes on 2 cores
def test_every_check_passes_on_the_cpu_and_only_small_files_come_back(tmp_path: Path) -> None:
    before = repository_state()
    out = tmp_path / "out"
    proc = dry_run(out, tmp_path / "tmp", "--budget", "900")
    _, stderr = proc.communicate()
    record = json.loads((out / "device_check.json").read_text())
    statuses = {name: check["status"] for name, check in record["checks"].items()}
    assert statuses == {**dict.fromkeys(CHECKS, "pass"), "sync_free": "skip"}, (statuses, stderr[-3000:])
    assert "the steps ran" in record["checks"]["sync_free"]["reason"]  # counted on CUDA only, but exercised here
    assert proc.returncode == 0
    cases = record["checks"]["train_steps"]["cases"]
    assert {"G16-LN+PN fused fp32", "G16-LN+PN plain bf16", "G16-LN+PN plain fp16", "G1-BN plain fp32"} <= set(cases)
    assert all(case["min_tensor_cosine"] > 0.5 for case in cases.values())
    # what comes back from a borrowed machine: a few small files, no folders; nothing left elsewhere
    files = sorted(p.name for p in out.iterdir())
    assert files == ["RESULTS.md", "device_check.json", "device_check.log"]
    assert all((out / f).stat().st_size < 1 << 20 for f in files)
    assert "| speed_train | pass |" in (out / "RESULTS.md").read_text()
    assert "train_steps: pass" in (out / "device_check.log").read_text()
    assert not list((tmp_path / "tmp").glob("peffnet-*"))  # the temporary folder of runs and exports is removed
    assert repository_state() == before


@pytest.mark.slow
def test_a_check_killed_at_the_time_limit_keeps_what_finished(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = dry_run(out, tmp_path / "tmp", "--only", "fold", "compile")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = out / "device_check.log"
        if log.exists() and "compile: starting" in log.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    checks = json.loads((out / "device_check.json").read_text())["checks"]
    assert checks["fold"]["status"] == "pass"
    assert checks["compile"]["status"] == "fail" and "SIGTERM" in checks["compile"]["error"]
    assert not list((tmp_path / "tmp").glob("peffnet-*"))


@pytest.mark.slow  # a fresh Python process
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run")
def test_without_a_gpu_the_check_says_so_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "device_check.py: error: no CUDA device here; use --device cpu --quick for a dry run"]
