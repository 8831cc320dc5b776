"""`peffnet eval`: accuracy per test resolution, best marked, mod-32 warnings, eval.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peffnet.cli import main
from peffnet.training.evaluate import evaluate_checkpoint, sweep_resolutions

pytestmark = pytest.mark.usefixtures("one_thread_module")

EVAL = ["--val-subset", "8", "--no-progress", "--batch-size", "4"]


def test_sweep_sizes() -> None:
    assert sweep_resolutions(32) == [32, 64, 96]
    assert sweep_resolutions(160) == [128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448, 480]
    assert sweep_resolutions(204, hi=300) == [172, 204, 236, 268, 300]


def test_sweep_json_and_eval_file(tiny_parent: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tiny_parent), "--sweep", "--json", *EVAL]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record == json.loads((tiny_parent / "eval.json").read_text())  # written next to the run
    assert record["train_resolution"] == 32 and record["weights"] == "averaged"
    assert [r["resolution"] for r in record["results"]] == [32, 64, 96]
    assert all(r["mod32_ok"] and 0 <= r["top1"] <= r["top5"] <= 100 for r in record["results"])
    best = max(record["results"], key=lambda r: (r["top1"], -r["resolution"]))
    assert record["best"] == best and "warning" not in captured.err
    # the training resolution reproduces the accuracy the training run reported for its averaged weights
    summary = json.loads((tiny_parent / "summary.json").read_text())
    assert record["results"][0]["top1"] == pytest.approx(summary["top1"])


def test_text_table_marks_best_and_warns(tiny_parent: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = str(tiny_parent / "checkpoint.pt")
    assert main(["eval", checkpoint, "--resolutions", "32,48", "--out", str(tmp_path), *EVAL]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("<- best") == 1 and "BREAKS" in captured.out
    assert "warning: test resolution 48 breaks r_test = r_train (mod 32)" in captured.err
    record = json.loads((tmp_path / "eval.json").read_text())
    assert [r["mod32_ok"] for r in record["results"]] == [True, False]


def test_python_api_live_weights(tiny_parent: Path) -> None:
    live = evaluate_checkpoint(tiny_parent, averaged=False, val_subset=8, progress=False)
    assert live["weights"] == "live" and [r["resolution"] for r in live["results"]] == [32]


@pytest.mark.parametrize("extra, message", [
    (["--resolutions", "16"], "resolutions must be at least 32"),
    (["--resolutions", "64,abc"], "resolutions must be an integer, got 'abc'"),
    (["--resolutions", ","], "--resolutions needs at least one size"),
    (["--min", "64"], "--min/--max go with --sweep"),
    (["--sweep", "--min", "200", "--max", "100"], "empty resolution range"),
    (["--data", "fashion-mnist"], "1 channel(s), but the checkpoint's efficientnet_b0"),
    (["--data", "nonsense"], "unknown data spec"),
])
def test_bad_input(tiny_parent: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tiny_parent), *extra, *EVAL]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_or_corrupt_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "none.pt"), "--sweep"]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["eval", str(tmp_path / "junk.pt")]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and err.count("\n") == 1
