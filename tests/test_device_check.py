"""scripts/device_check.py, the GPU check, dry-run on the CPU (`--device cpu --quick`): every check runs, so the
script cannot rot between the times a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_check.py"


@pytest.mark.slow  # every check at tiny sizes: about 2-3 minutes on 2 cores
def test_every_check_passes_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out),
                           "--results", str(tmp_path / "results"), "--budget", "900"],
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    record = json.loads((out / "device_check.json").read_text())
    statuses = {name: check["status"] for name, check in record["checks"].items()}
    assert statuses == dict.fromkeys(["train_steps", "checkpoint_to_cpu", "fold_and_export", "ddp", "compile",
                                      "speed", "suite"], "pass"), (statuses, proc.stderr[-3000:])
    assert proc.returncode == 0
    cases = record["checks"]["train_steps"]["cases"]
    assert {"G16-LN+PN fused bf16", "G1-BN plain fp16"} <= set(cases)
    assert (tmp_path / "RESULTS.md").is_file()  # the suite's column, here from tiny CPU sizes
