"""docs/formats.md holds the file formats: its key tables equal the keys real runs write."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import documented_keys
from peffnet.checkpoint import load_checkpoint
from peffnet.cli import main
from resolution_helpers import TINY_FINETUNE

pytestmark = pytest.mark.usefixtures("one_thread_module")

@pytest.fixture(scope="module")
def finetuned(tiny_parent: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("formats") / "ft"
    assert main(["finetune", str(tiny_parent), "--resolution", "64", "--epochs", "1", *TINY_FINETUNE,
                 "--out", str(out)]) == 0
    return out


def test_run_directory_files(tiny_parent: Path) -> None:
    """Every file a finished run leaves is documented; what is documented but not there is written only in
    some cases (older checkpoints, the lock while running, damaged checkpoints, other commands' files)."""
    documented = {k.rstrip("/") for k in documented_keys("Run directory")}
    patterns = [re.compile(re.escape(k).replace(r"\{N\}", r"\d+").replace("NAME", ".+")) for k in documented]
    written = {p.name for p in tiny_parent.iterdir()}
    assert all(any(p.fullmatch(name) for p in patterns) for name in written), written
    sometimes = {"checkpoint-step{N}.pt", "peffnet.lock", "NAME.corrupt", "eval.json", "bench.json"}
    assert documented - sometimes <= written


def test_checkpoint_keys(tiny_parent: Path, finetuned: Path) -> None:
    finetune_only = {"parent", "parent_train_resolution", "finetune_stages"}
    documented = documented_keys("`checkpoint.pt`")
    assert set(load_checkpoint(tiny_parent / "checkpoint.pt")) == documented - finetune_only
    assert set(load_checkpoint(finetuned / "checkpoint.pt")) == documented


def test_checkpoints_record_their_own_preprocessing(tiny_parent: Path, finetuned: Path) -> None:
    """Training records its evaluation preprocessing, fine-tuning its own (at the fine-tuning resolution)."""
    documented = documented_keys("`checkpoint.pt`: `preprocessing`")
    for run, resolution in ((tiny_parent, 32), (finetuned, 64)):
        state = load_checkpoint(run / "checkpoint.pt")
        assert set(state["preprocessing"]) == documented
        assert state["preprocessing"]["resolution"] == resolution
        assert state["classes"] == [f"prototype {i}" for i in range(10)]


def test_summary_keys(tiny_parent: Path, finetuned: Path) -> None:
    common = documented_keys("`summary.json`")
    train = json.loads((tiny_parent / "summary.json").read_text())
    assert set(train) == common
    extra = documented_keys("`summary.json`: fine-tuning adds")
    ft = json.loads((finetuned / "summary.json").read_text())
    assert set(ft) == common | extra


def test_a_run_records_paths_relative_to_its_directory(tiny_parent: Path, finetuned: Path,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """A run directory moved or shipped names no folder of the machine that made it: the checkpoint, ``out``
    and the fine-tuned model's parent are recorded relative to the run directory (the inputs a run read, such
    as the checkpoint fine-tuned, are settings recorded as given)."""
    machine = str(tmp_path_factory.getbasetemp())
    for run in (tiny_parent, finetuned):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["checkpoint"] == "checkpoint.pt" and machine not in (run / "summary.json").read_text()
        assert yaml.safe_load((run / "config.yaml").read_text())["out"] == "."
        assert load_checkpoint(run / "checkpoint.pt")["config"]["out"] == "."
    assert machine not in (tiny_parent / "config.yaml").read_text()
    parent = json.loads((finetuned / "summary.json").read_text())["parent"]
    assert (finetuned / parent).resolve() == (tiny_parent / "checkpoint.pt").resolve()


def test_metrics_keys(tiny_parent: Path) -> None:
    records = [json.loads(line) for line in (tiny_parent / "metrics.jsonl").read_text().splitlines()]
    documented = documented_keys("`metrics.jsonl`")
    assert {r["kind"] for r in records} == {"step", "epoch"}
    assert set().union(*(set(r) for r in records)) == documented
    assert all(set(r) == documented - {"top1", "top5"} for r in records if r["kind"] == "step")


def test_eval_keys(tiny_parent: Path, tmp_path: Path) -> None:
    assert main(["eval", str(tiny_parent), "--val-subset", "8", "--no-progress", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "eval.json").read_text())
    assert (tmp_path / record["checkpoint"]).resolve() == (tiny_parent / "checkpoint.pt").resolve()  # relative
    top = documented_keys("`eval.json`")
    each = documented_keys("`eval.json`: each result")
    assert set(record) == top
    assert all(set(r) == each for r in record["results"])
