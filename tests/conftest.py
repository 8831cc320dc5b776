"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import peffnet
from peffnet.cli import main
from peffnet.models import build, preset
from resolution_helpers import TINY_SERVED, train_tiny

FORMATS_DOC = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
COMMAND_ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
"""The environment of a ``python -m peffnet`` subprocess: OpenMP threads that sleep while they wait, as the command
chooses on a busy machine; given, the choice is the user's, so the command starts once (peffnet_command)."""


def documented_keys(heading: str) -> set[str]:
    """The backticked names in the first column of the first table under ``heading`` (a ``##``/``###`` line)
    of docs/formats.md."""
    text = FORMATS_DOC.read_text()
    start = re.search(rf"^#+ {re.escape(heading)}\s*$", text, re.M)
    assert start, f"no section {heading!r} in {FORMATS_DOC}"
    keys, in_table = set(), False
    for line in text[start.end():].splitlines():
        if line.startswith("#"):
            break
        if line.startswith("|"):
            in_table = True
            first = line.split("|")[1]
            keys.update(re.findall(r"`([^`]+)`", first))
        elif in_table:
            break
    return keys - {"key"}


def meta_model(name: str, **overrides: object) -> peffnet.EfficientNet:
    """Build a model on the meta device (shapes only, instant even for B7)."""
    with torch.device("meta"):
        return build(preset(name, **overrides))


def randomize(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every 1-D parameter (norm/PN affine, biases) away from its initial value, so that every proxy
    moment (Eq. 4) matters; returns ``module``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def checkpointed_grads_match(model: torch.nn.Module, x: torch.Tensor, **tolerance: float) -> None:
    """Parameter gradients of ``model(x).sum()`` with grad checkpointing equal those without it."""
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for a, b in zip(ref, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, **tolerance)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test: on the shared 2-core machine, OpenMP spin-waiting of two contending
    threads makes tiny ops up to 100x slower. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """:func:`one_thread` for a whole module, its module-scoped runs included."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained run (:func:`resolution_helpers.train_tiny`) shared by the eval and fine-tuning tests,
    which only read it (``peffnet eval`` adds its ``eval.json``)."""
    with torch_threads(1):
        return train_tiny(tmp_path_factory.mktemp("parent"))


@pytest.fixture(scope="session")
def served_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained G16-LN+PN run (:data:`resolution_helpers.TINY_SERVED`, its proxy norm folded when served)
    shared by the export, predict and report tests. They only read it; a test that writes into a run (an
    export beside the checkpoint, ``peffnet eval``) copies it first (:func:`copy_run`)."""
    with torch_threads(1):
        return train_tiny(tmp_path_factory.mktemp("served") / "run", TINY_SERVED)


@pytest.fixture(scope="session")
def served_onnx(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """:func:`served_run` exported to ONNX by ``peffnet export`` at its recorded (evaluation) resolution, and
    what the command printed: one export (the exporter traces with torch.export, ~15 s on 2 cores) for the
    export and predict tests."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    printed = io.StringIO()
    with torch_threads(1), contextlib.redirect_stdout(printed):
        assert main(["export", str(served_run), "--out", str(out)]) == 0
    return out, printed.getvalue()


def copy_run(run: Path, to: Path) -> Path:
    """A copy of the run directory ``run`` at ``to`` (for a test that writes into a shared run)."""
    return Path(shutil.copytree(run, to))


SHARED_RUNS = ("served_run", "tiny_parent")
"""The session-scoped runs several test files read (:func:`served_onnx` is made from the first)."""


@functools.lru_cache
def shared_run_of(test_file: Path) -> str | None:
    """The first of :data:`SHARED_RUNS` a test file takes as a fixture (a parameter of one of its functions)."""
    text = test_file.read_text() if test_file.is_file() else ""
    return next((name for name in SHARED_RUNS if re.search(rf"def \w+\([^)]*\b{name}\b", text)), None)


LONGEST_FIRST = ("tests/test_timm_contract.py", "tests/test_device_check.py", "tiny_parent", "tests/test_ddp.py",
                 "tests/test_bench.py", "tests/test_study.py", "tests/test_preemption.py", "tests/test_proxy_norm.py",
                 "served_run")
"""The longest units of work of the whole suite, longest first (``--durations=0`` on 2 cores): started first,
so that no worker is left with a long one at the end while the other idles. The rest follow xdist's order."""


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadfile`` (scripts/test.sh: a test file runs on one worker, so its module-scoped fixtures are made
    once), with the files that read one of :data:`SHARED_RUNS` scheduled together as one unit, so that each shared
    run (and the ONNX export made from one) is made once, not once per worker; :data:`LONGEST_FIRST` first."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedRunScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return shared_run_of(config.rootpath / path) or path

        def _assign_work_unit(self, node: object) -> None:
            first = min(self.workqueue, key=lambda unit: LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST
                        else len(LONGEST_FIRST))  # the first of the longest still waiting, else the queue's first
            self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

    return SharedRunScheduling(config, log)
