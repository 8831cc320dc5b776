"""`peffnet study` (paper Figure 1 on this machine): a tiny grid on synthetic data, resumed and extended."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from peffnet.cli import main
from peffnet.study.report import time_to_targets
from peffnet.training.config import SMALL_DATA_DEFAULTS

pytestmark = pytest.mark.usefixtures("one_thread_module")

TINY = ["--data", "synthetic", "--groups", "1,16", "--norms", "gn", "--regimes", "native,half", "--epochs", "1",
        "--subset", "32", "--val-subset", "16", "--finetune-subset", "16", "--test-subset", "32", "--batch-size",
        "8", "--repeats", "1", "--no-progress"]
ROW_KEYS = {"label", "group_size", "norm", "regime", "seed", "params", "macs", "train_img_per_s", "train_time_s",
            "top1"}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study") / "s"
    assert main(["study", "--out", str(out), *TINY]) == 0
    return out


@pytest.mark.slow  # four tiny trainings, two fine-tunings and the alternating benchmark: ~1 minute on 2 cores
def test_grid_rows_speed_and_report(study: Path) -> None:
    record = json.loads((study / "study.json").read_text())
    assert sorted(r["label"] for r in record["rows"]) == ["G1-GN-Half", "G1-GN-Native", "G16-GN-Half",
                                                          "G16-GN-Native"]
    for r in record["rows"]:
        assert set(r) >= ROW_KEYS and 0 <= r["top1"] <= 100 and r["train_img_per_s"] > 0 and r["train_time_s"] > 0
        assert (r["train_resolution"], r["test_resolution"]) == ((32 if r["regime"] == "half" else 64), 64)
        assert r["expansion"] == {1: 6, 16: 4}[r["group_size"]]
    speed = json.loads((study / "speed.json").read_text())
    settings = {(c["cell"], c["stage"]) for c in speed["candidates"]}
    assert ("g16-gn-half", "finetune") in settings and ("g1-gn-native", "finetune") not in settings
    tried = [c["setting"] for c in speed["candidates"] if (c["cell"], c["stage"]) == ("g16-gn-native", "train")]
    bf16 = speed["precisions"].startswith("bf16 tried")  # else: "bf16 not tried: its measured peak is 0.1x fp32's"
    assert sorted(tried) == ["NCHW bf16", "NCHW fp32", "channels_last bf16", "channels_last fp32"] if bf16 else \
        ["NCHW fp32", "channels_last fp32"]
    for stages in speed["chosen"].values():  # each stage runs with its fastest candidate
        for stage, best in stages.items():
            rivals = [c["img_per_s"] for c in speed["candidates"]
                      if (c["cell"], c["stage"]) == (best["cell"], stage) and c["rounds"]]
            assert best["img_per_s"] == max(rivals)
    infer = [c["cell"] for c in speed["candidates"] if c["stage"] == "infer"]  # timed once for both regimes
    assert sorted(set(infer)) == ["g1-gn-native", "g16-gn-native"]
    assert speed["chosen"]["g1-gn-half"]["infer"] == speed["chosen"]["g1-gn-native"]["infer"]
    for run in (study / "runs").glob("*/train"):  # one set of defaults: peffnet train's, as in the recipe
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert all(config[k] == v for k, v in SMALL_DATA_DEFAULTS.items() if k != "batch_size")
    md = (study / "study.md").read_text()
    assert "| G16-GN-Half | 1 |" in md and "into one directory): `peffnet study" in md
    for name in ("macs", "train_img_per_s", "train_time_s", "infer_img_per_s"):
        assert (study / f"accuracy_vs_{name}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_a_new_seed_extends(study: Path) -> None:
    results = sorted((study / "runs").glob("*/result.json"))
    before = {p: p.stat().st_mtime_ns for p in results}
    speed_before = (study / "speed.json").stat().st_mtime_ns
    assert main(["study", "--out", str(study), *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in results} == before
    argv = [a if a != "1,16" else "16" for a in TINY]
    assert main(["study", "--out", str(study), *argv, "--regimes", "native", "--seeds", "1"]) == 0
    assert (study / "speed.json").stat().st_mtime_ns == speed_before  # no new configuration: same benchmark
    record = json.loads((study / "study.json").read_text())
    g16 = next(c for c in record["configurations"] if c["label"] == "G16-GN-Native")
    assert g16["seeds"] == [0, 1] and g16["top1_min"] <= g16["top1"] <= g16["top1_max"]
    assert len(record["commands"]) == 2 and "--seeds 1" in record["commands"][1]  # the study's pieces
    assert all("--out . " in c for c in record["commands"])  # relative to the study directory
    for name in ("plan.json", "study.json", "study.md"):
        assert str(study) not in (study / name).read_text()


def test_time_to_target_is_the_first_epoch_that_reached_it() -> None:
    curve = [{"top1": 60.0, "time_s": 10.0}, {"top1": 82.0, "time_s": 20.0}, {"top1": 81.0, "time_s": 30.0}]
    assert time_to_targets(curve, [50.0, 80.0, 90.0]) == {"50": 10.0, "80": 20.0, "90": None}


@pytest.mark.parametrize("extra, message", [
    (["--norms", "gn,xn"], "norms must be one of"),
    (["--groups", "8"], "groups must be 1, 4 or 16"),
    (["--regimes", "quarter"], "regimes must be one of native, half"),
    (["--seeds", ","], "the grid is empty: give at least one value of seeds"),
    (["--data", "nonsense"], "unknown data spec"),
])
def test_bad_input(tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "--out", str(tmp_path / "s"), *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "s").exists()


def test_a_directory_holding_another_study_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    out.mkdir()
    (out / "plan.json").write_text(json.dumps({"data": "synthetic", "epochs": 7}))
    assert main(["study", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert "holds a different study (epochs=7, this one has 1)" in err and err.count("\n") == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["study", "--out", str(tmp_path / "other"), *TINY]) == 2
    assert "is not empty and holds no study" in capsys.readouterr().err
