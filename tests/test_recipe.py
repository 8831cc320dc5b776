"""`peffnet recipe`: half-resolution training -> fine-tuning -> sweep -> summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import documented_keys
from peffnet.cli import main
from peffnet.training.config import SMALL_DATA_DEFAULTS
from peffnet.training.recipe import (
    SHORT_RUN_FINETUNE_LR,
    SHORT_RUN_LR_SCALE,
    SMALL_IMAGE_NATIVE,
    RecipeConfig,
    result_at,
)

pytestmark = pytest.mark.usefixtures("one_thread_module")

TINY = ["--data", "synthetic", "--model", "efficientnet_b0", "--norm", "gn", "--subset", "16",
        "--finetune-subset", "16", "--val-subset", "8", "--sweep-subset", "8", "--test-subset", "16",
        "--batch-size", "8", "--finetune-batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recipe") / "r"
    assert main(["recipe", "--out", str(out), "--baseline", *TINY]) == 0
    return out


def test_default_sizes() -> None:
    assert RecipeConfig(out="x").sizes() == (64, 32, 64, [32, 64, 96])
    assert SMALL_IMAGE_NATIVE == 64
    assert RecipeConfig(out="x", data="imagefolder:/d", model="efficientnet_b3").sizes() == (
        300, 204, 300, [204, 236, 268, 300, 332])


def test_stages_and_summary(recipe: Path) -> None:
    s = json.loads((recipe / "summary.json").read_text())
    assert (s["native"], s["train_resolution"], s["finetune_resolution"]) == (64, 32, 64)
    assert list(s["stages"]) == ["train", "finetune", "native"]
    train, ft, native = (s["stages"][k] for k in ("train", "finetune", "native"))
    assert (train["train_resolution"], ft["train_resolution"], native["train_resolution"]) == (32, 64, 64)
    assert ft["finetune_stages"] == 2 and ft["epochs"] == 2
    assert ft["trainable_params"] < ft["params"]
    for st in s["stages"].values():
        assert st["wall_time_s"] > 0 and st["train_img_per_s"] > 0 and 0 <= st["top1"] <= 100
    ev = s["evaluations"]
    assert [r["resolution"] for r in ev["finetuned"]["results"]] == [32, 64, 96]
    assert [r["resolution"] for r in ev["native"]["results"]] == [32, 64, 96]
    assert [r["resolution"] for r in ev["half"]["results"]] == [32, 64]
    for e in ev.values():  # every size on the sweep's 8 images, the best of them on all 16 test images
        assert {r["images"] for r in e["results"]} == {8} and e["best"]["images"] == 16
        assert e["best"]["resolution"] == max(e["results"], key=lambda r: (r["top1"], -r["resolution"]))["resolution"]
    assert s["half_wall_time_s"] == pytest.approx(train["wall_time_s"] + ft["wall_time_s"])
    # each stage is a complete run directory, chained through the checkpoint's parent
    summary_ft = json.loads((recipe / "finetune" / "summary.json").read_text())
    assert summary_ft["lr"] == SHORT_RUN_FINETUNE_LR  # the small-dataset default, not 0.25 x batch / 512
    assert summary_ft["parent"] == "../train/checkpoint.pt" and s["config"]["out"] == "."  # relative paths
    # with in-run and final evaluations on the same images, the sweep re-measures the fine-tuned accuracy
    assert ft["top1"] == summary_ft["top1"] == result_at(s, "finetuned", 64)["top1"]
    assert train["top1"] == result_at(s, "half", 32)["top1"]
    assert set(s) == documented_keys("Recipe directory")  # docs/formats.md
    md = (recipe / "summary.md").read_text()
    assert "| train | 32 |" in md and "| finetune | 64 |" in md and "| half + fine-tuned |" in md and "*" in md


def test_training_stages_take_train_s_small_dataset_defaults(recipe: Path) -> None:
    """One set of defaults: the recipe's training stages get `peffnet train`'s (as the study's runs do); only
    what the recipe declares itself (epochs, batch, resolution, ...) differs, and its one named difference, the
    full lr of a one-epoch run (SHORT_RUN_LR_SCALE)."""
    own = ("batch_size", "lr_scale")
    for stage in ("train", "native"):
        config = yaml.safe_load((recipe / stage / "config.yaml").read_text())
        assert {k: config[k] for k in SMALL_DATA_DEFAULTS if k not in own} == {
            k: v for k, v in SMALL_DATA_DEFAULTS.items() if k not in own}
        assert (config["batch_size"], config["epochs"]) == (8, 1)
        assert config["lr_scale"] == SHORT_RUN_LR_SCALE and config["lr"] == pytest.approx(8 * 2**-14)


@pytest.mark.slow  # the finished recipe again: every evaluation reruns
def test_resume_keeps_finished_stages(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {d: (recipe / d / "checkpoint.pt").stat().st_mtime_ns for d in ("train", "finetune", "native")}
    assert main(["recipe", "--out", str(recipe), "--baseline", "--resume", *TINY]) == 0
    assert {d: (recipe / d / "checkpoint.pt").stat().st_mtime_ns for d in before} == before
    assert "| finetune | 64 |" in capsys.readouterr().out
    assert main(["recipe", "--out", str(recipe), *TINY]) == 2  # no silent overwrite
    assert "already holds a recipe run" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--finetune-stages", "4"], "finetune_stages must be 1, 2 or 3"),
    (["--native", "20"], "native must be at least 32"),
    (["--test-resolutions", "64,16"], "test_resolutions must be at least 32"),
    (["--norm", "xx"], "unknown norm"),
    (["--epochs", "0"], "epochs must be a positive"),
    (["--threads", "0"], "threads must be a positive integer"),
    (["--finetune-lr", "0"], "finetune_lr must be a positive number"),
    (["--train-config", "/nonexistent.yaml"], "cannot read config"),
])
def test_bad_input_fails_before_training(tmp_path: Path, extra: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "--out", str(tmp_path / "r"), *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # the finished recipe again: every evaluation reruns
def test_only_rank_0_writes(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun every rank runs the recipe's evaluations; only rank 0 writes their records and the
    summaries. Here the finished recipe is resumed as rank 1: every stage is kept, every evaluation reruns."""
    from peffnet.training import distributed

    records = [recipe / d / "eval.json" for d in ("train", "finetune", "native")]
    records += [recipe / "summary.json", recipe / "summary.md"]
    before = {p: p.stat().st_mtime_ns for p in records}
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert main(["recipe", "--out", str(recipe), "--baseline", "--resume", *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in records} == before
