"""The command's entry point chooses how OpenMP threads wait, before torch loads OpenMP; importing the library
does no such work (docs/training.md, "Shared CPUs: chosen for you")."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peffnet_command import SPIN_WHEN_IDLE, busy_cores, choose_openmp_waiting, openmp_waiting

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
OPENMP = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")


def environment_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


def console_script() -> list[str]:
    """The ``peffnet`` console script as pip writes it, for the entry point pyproject.toml declares."""
    module, func = re.search(r'^peffnet = "([\w.]+):(\w+)"', PYPROJECT.read_text(), re.M).groups()
    code = f"import sys; from {module} import {func}; sys.argv[0] = 'peffnet'; sys.exit({func}())"
    return [sys.executable, "-c", code]


@pytest.mark.slow  # a fresh Python process
def test_importing_peffnet_does_no_work() -> None:
    """Imported under the command's name, the library leaves the environment alone and reads no ``/proc/stat``
    (torch and timm are imported first: timm sets ``TORCHINDUCTOR_CACHE_DIR``)."""
    code = ("import json, os, sys, timm, torch; sys.argv[0] = 'peffnet'; opened = []; "
            "sys.addaudithook(lambda event, args: event == 'open' and opened.append(str(args[0]))); "
            "before = dict(os.environ); import peffnet; "
            "print(json.dumps({'changed': sorted(set(os.environ.items()) ^ set(before.items())), "
            "'proc_stat': '/proc/stat' in opened, 'registered': 'peffnet_g16_efficientnet_b0' in timm.list_models()}))")
    env = environment_without(*OPENMP)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"changed": [], "proc_stat": False, "registered": True}


def openmp_settings_read(stderr: str) -> dict[str, str]:
    """The settings the OpenMP runtime read as it loaded, as it reports them with ``OMP_DISPLAY_ENV=VERBOSE``
    (the last report: ``python -m peffnet`` may start twice)."""
    reports = re.findall(r"OPENMP DISPLAY ENVIRONMENT BEGIN(.*?)OPENMP DISPLAY ENVIRONMENT END", stderr, re.S)
    if not reports:
        pytest.skip("this torch's OpenMP runtime does not report its settings (OMP_DISPLAY_ENV)")
    return dict(re.findall(r"^\s*(\w+) = '([^']*)'", reports[-1], re.M))


@pytest.mark.parametrize(("entry", "policy"), [
    pytest.param("console script", None, marks=pytest.mark.slow),  # a fresh Python process
    pytest.param("python -m peffnet", None, marks=pytest.mark.slow),  # two starts of torch: ~20 s when busy
    pytest.param("python -m peffnet", "ACTIVE", marks=pytest.mark.slow),
])
def test_the_command_chooses_how_openmp_waits_before_openmp_loads(entry: str, policy: str | None) -> None:
    """The OpenMP runtime torch loads reads its settings once, as it loads: it reports the command's choice
    (threads that sleep at once, or spin briefly instead of libgomp's 300 000 turns), or the user's own
    (``python -m peffnet`` then starts once)."""
    env = environment_without(*OPENMP) | {"OMP_DISPLAY_ENV": "VERBOSE"}
    env |= {"OMP_WAIT_POLICY": policy} if policy else {}
    command = console_script() if entry == "console script" else [sys.executable, "-m", "peffnet"]
    proc = subprocess.run([*command, "--version"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("peffnet "), proc.stderr
    read = openmp_settings_read(proc.stderr)
    if policy:
        assert read["OMP_WAIT_POLICY"] == policy and proc.stderr.count("DISPLAY ENVIRONMENT BEGIN") == 1
    else:
        assert read["GOMP_SPINCOUNT"] in ("0", SPIN_WHEN_IDLE)  # 0: OMP_WAIT_POLICY=PASSIVE


@pytest.mark.parametrize(("busy", "chosen"), [
    (0.1, {"GOMP_SPINCOUNT": SPIN_WHEN_IDLE}),
    (0.9, {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "7"}),
    (2.6, {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "5"}),
    (8.0, {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}),
    (None, {"OMP_WAIT_POLICY": "PASSIVE"}),
])
def test_threads_sleep_at_once_on_the_idle_cores_of_a_busy_machine_and_spin_briefly_on_an_idle_one(
        busy: float | None, chosen: dict[str, str]) -> None:
    assert openmp_waiting(busy, cores=8) == chosen


def test_the_users_own_settings_stay() -> None:
    for mine in ({"GOMP_SPINCOUNT": "7"}, {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}):
        environ = dict(mine)
        assert choose_openmp_waiting(environ) == {} and environ == mine
    environ = {"OMP_NUM_THREADS": "3"}
    chosen = choose_openmp_waiting(environ)
    assert chosen in ({"GOMP_SPINCOUNT": SPIN_WHEN_IDLE}, {"OMP_WAIT_POLICY": "PASSIVE"})
    assert environ == {"OMP_NUM_THREADS": "3", **chosen}


def test_busy_cores_counts_another_process() -> None:
    idle = busy_cores(0.3)  # whatever the machine does now: a number
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        loaded = busy_cores(0.3)
    finally:
        busy.kill()
        busy.wait()
    assert idle is not None and loaded is not None and loaded >= 0.5  # the busy loop holds about one core
