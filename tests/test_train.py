"""`peffnet train`: configuration, recipe pieces, an end-to-end run, micro-batching, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import documented_keys
from peffnet.checkpoint import load_checkpoint, model_from_checkpoint
from peffnet.cli import main
from peffnet.data import build_dataset, make_loader
from peffnet.errors import ConfigError
from peffnet.models import build, preset
from peffnet.runtime.device import prefers_channels_last
from peffnet.runtime.mixing import mix_batch
from peffnet.training.config import PAPER_DEFAULTS, TrainConfig, resolve, resolve_resolution
from peffnet.training.finetune import FinetuneConfig
from peffnet.training.loop import evaluate
from peffnet.training.optim import EpochAverage, recipe_lr_factor
from train_helpers import final_weights, make_image_folder, max_abs_diff, tiny_args

# ------------------------------------------------------------------ configuration


def test_config_layers_and_types(tmp_path: Path) -> None:
    cfg = TrainConfig.from_layers({"epochs": "3", "lr": "0.5", "channels_last": "yes"}, {"epochs": 4})
    assert (cfg.epochs, cfg.lr, cfg.channels_last, cfg.batch_size) == (4, 0.5, True, None)  # None: auto
    for bad, message in [({"epochs": "ten"}, "epochs must be a positive integer, got 'ten'"),
                         ({"epochs": 0}, "epochs must be a positive integer, got 0"),
                         ({"amp": "fp8"}, "amp must be one of off, bf16, fp16"),
                         ({"epochs": 2.5}, "epochs must be a positive integer, got 2.5"),
                         ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\)")]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_layers(bad)
    good = tmp_path / "good.yaml"
    good.write_text("batch-size: 16\nnorm: ln\n")
    assert TrainConfig.read_yaml(str(good)) == {"batch_size": 16, "norm": "ln"}
    for text, message in [("epochs: [1\n", "not valid YAML"), ("- 1\n", "must be a mapping"),
                          ("epoks: 3\n", "unknown setting.*epoks")]:
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            TrainConfig.read_yaml(str(tmp_path / "bad.yaml"))


def test_auto_values_follow_the_paper_on_image_folders() -> None:
    run = resolve(TrainConfig.from_layers({"data": "imagefolder:x", "out": "x", "model": "g16_efficientnet_b0"}), 1,
                  1000, 3)
    c = run.config
    assert c.lr == 768 * 2**-14 and c.rmsprop_decay == 1 - 768 * 2**-14  # Section 3.4
    assert (c.micro_batch_size, c.mixup_alpha, c.cutmix_lambda, c.resolution) == (768, 0.1, 1.0, "224")
    assert (c.drop_path_rate, c.drop_rate, c.head_init_scale, run.time_scale) == (0.2, 0.2, 1.0, 1.0)
    b3 = resolve(TrainConfig.from_layers({"data": "imagefolder:x", "out": "x", "model": "efficientnet_b3",
                              "resolution": "half", "batch_size": 512, "lr_scale": 2}), 4, 1000, 3)
    assert (b3.config.mixup_alpha, b3.config.cutmix_lambda, b3.config.resolution) == (0.2, 0.85, "204")
    assert (b3.config.micro_batch_size, b3.config.lr) == (128, 2 * 512 * 2**-14)
    assert resolve_resolution("native", "synthetic", 240) == 240
    short = resolve(TrainConfig.from_layers({"data": "synthetic", "out": "x", "epochs": 35}), 1, 10, 3)
    assert short.time_scale == 0.1 and math.isclose(short.average_decay_per_epoch, 0.97**10)


def test_small_datasets_get_settings_that_train() -> None:
    """The paper's ImageNet lr diverges on Fashion-MNIST (11.6 % after a run with the old defaults); small data
    get SMALL_DATA_DEFAULTS unless told otherwise, and the flagship G16 LN+PN by default."""
    c = resolve(TrainConfig.from_layers({"data": "fashion-mnist", "out": "x"}), 1, 10, 1).config
    assert (c.model, c.norm, c.group_size, c.expansion) == ("g16_efficientnet_b0_lnpn", "lnpn", 16, 4)
    assert (c.batch_size, c.lr, c.head_init_scale, c.translate) == (256, 0.25 * 256 * 2**-14, 0.0, 2)
    assert (c.drop_rate, c.drop_path_rate, c.mixup_alpha, c.resolution, c.optimizer) == (0.0, 0.0, 0.0, "32",
                                                                                         "rmsprop_tf")
    given = resolve(TrainConfig.from_layers({"data": "fashion-mnist", "out": "x", "lr_scale": 1, "drop_rate": 0.1,
                                             "model": "g16_efficientnet_b0"}), 1, 10, 1).config
    assert (given.lr, given.drop_rate, given.norm) == (256 * 2**-14, 0.1, "bn")  # what is given stays given
    assert given.optimizer == "adam"  # BN's on small data (SMALL_DATA_OPTIMIZER); image folders: the paper's
    for data, norm, optimizer in (("imagefolder:/d", "bn", "rmsprop_tf"), ("synthetic", "bn", "adam"),
                                  ("synthetic", "bn", "rmsprop_tf")):
        told = {"optimizer": optimizer} if (data, optimizer) == ("synthetic", "rmsprop_tf") else {}
        c = resolve(TrainConfig.from_layers({"data": data, "out": "x", "norm": norm, **told}), 1, 10, 1).config
        assert c.optimizer == optimizer


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 8, "micro_batch_size": 3}, "cannot be split into micro-batches of 3"),
    ({"batch_size": 16384}, "set --rmsprop-decay"),
    ({"resolution": "16"}, "at least 32"),
    ({"resolution": "big"}, "native, half or a number"),
    ({"norm": "xn"}, "unknown norm"),
    ({"out": ""}, "--out is required"),
])
def test_impossible_settings(settings: dict, message: str) -> None:
    cfg = TrainConfig.from_layers({"data": "synthetic", "out": "x", **settings})
    with pytest.raises(ConfigError, match=message):
        resolve(cfg, 1, 10, 3)
    with pytest.raises(ConfigError, match="must be a multiple of micro-batch x processes"):
        resolve(TrainConfig.from_layers({"data": "synthetic", "out": "x", "batch_size": 8, "micro_batch_size": 4}),
                4, 10, 3)


# ------------------------------------------------------------------ recipe pieces


def test_lr_schedule_warmup_then_staircase_decay() -> None:
    f = [recipe_lr_factor(s, 10, 5, 2.4, 0.97) for s in range(100)]
    assert f[0] == pytest.approx(1 / 50) and f[49] == pytest.approx(1.0)  # linear warm-up over 5 epochs
    assert f[50] == pytest.approx(0.97**2)  # step 50 = epoch 5 = two full 2.4-epoch periods
    assert f[71] == pytest.approx(0.97**2) and f[72] == pytest.approx(0.97**3)
    assert recipe_lr_factor(0, 10, 0.01, 1, 0.5) == 1.0  # a warm-up shorter than a step never exceeds the peak
    # a run 10x shorter than the recipe ends at the recipe's final lr
    end = recipe_lr_factor(349, 10, 0.5, 0.24, 0.97)
    assert end == pytest.approx(recipe_lr_factor(3499, 10, 5, 2.4, 0.97))


def test_mixup_and_cutmix_targets_match_pixels() -> None:
    torch.manual_seed(0)
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 20, 20).clone()
    labels = torch.arange(6)
    mixed, targets = mix_batch(images, labels, 6, mixup_alpha=0.0, cutmix_lambda=0.75)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    for i in range(6):
        pasted = (mixed[i] == (i - 2) % 6).float().mean()  # CutMix pastes from two places back
        assert targets[i, (i - 2) % 6] == pytest.approx(pasted.item()) == pytest.approx(0.25)
        assert targets[i, i] == pytest.approx(0.75)
    mixed, targets = mix_batch(images, labels, 6, mixup_alpha=0.2, cutmix_lambda=1.0)
    own = targets[torch.arange(6), labels]
    assert (own >= 0.5).all() and torch.allclose(targets.sum(1), torch.ones(6))
    expected = own * labels + (1 - own) * labels.roll(1)  # Mixup blends with the neighbour, same weight
    assert torch.allclose(mixed[:, 0, 0, 0], expected.float(), atol=1e-5)


def test_epoch_average_starts_at_first_epoch() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    avg = EpochAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(4.0)
        assert avg.weights(model)["weight"].eq(4.0).all()  # no epoch yet: the model itself
        avg.end_epoch(model)
        model.weight.fill_(2.0)
        avg.end_epoch(model)
    assert avg.weights(model)["weight"].eq(3.0).all()  # 0.5 * 4 + 0.5 * 2; the init never enters


# ------------------------------------------------------------------ end to end


def test_tiny_run_writes_the_contract_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(tiny_args(out, epochs=2)) == 0
    assert "top-1" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary.keys() == documented_keys("`summary.json`")  # docs/formats.md
    assert (summary["epochs"], summary["steps"], summary["train_resolution"], summary["norm"]) == (2, 8, 32, "gn")
    assert summary["train_img_per_s"] > 0 and summary["peak_memory_bytes"] > 0 and summary["macs"] > 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (2, 8)
    assert yaml.safe_load((out / "config.yaml").read_text()) == state["config"]
    assert state["config"]["channels_last"] is False  # not given: the layout GN trains fastest in on a CPU
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 9))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert len((out / "metrics.csv").read_text().splitlines()) == len(records) + 1
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    # the summary's accuracy is that of the averaged weights the checkpoint holds
    model, _ = model_from_checkpoint(out / "checkpoint.pt")
    val = build_dataset("synthetic", "val", 32, False, subset=16)
    assert evaluate(model, make_loader(val, 16, train=False)) == pytest.approx((summary["top1"], summary["top5"]))
    # the run is there: a second run into the same directory never overwrites it (it continues it, or says why not)
    assert main(tiny_args(out)) == 2
    assert f"the run in {out} is at step 8, past the 1 epoch(s) asked for" in capsys.readouterr().err
    assert main(tiny_args(out, "--resume", "no")) == 2
    assert f"{out} already holds a run (checkpoint.pt)" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 8


def test_result_does_not_depend_on_micro_batch_size(tmp_path: Path) -> None:
    """GN model, global batch 8: one pass of 8 vs four accumulated micro-batches of 2 (Section 3.4)."""
    assert main(tiny_args(tmp_path / "whole")) == 0
    assert main(tiny_args(tmp_path / "micro", "--micro-batch-size", "2")) == 0
    whole, micro = final_weights(tmp_path / "whole"), final_weights(tmp_path / "micro")
    assert max_abs_diff(whole, micro) < 1e-6
    torch.manual_seed(0)  # sanity: training moved the (seed 0) initial weights far more than that
    init = build(preset("efficientnet_b0", norm="gn", expansion=1, num_classes=10)).state_dict()
    body = [k for k in init if not k.startswith("classifier.")]  # (the classifier starts at 0: head_init_scale)
    assert max_abs_diff({k: whole[k] for k in body}, {k: init[k] for k in body}) > 1e-4


@pytest.mark.slow  # three tiny runs, one in bf16 (slow on CPUs)
def test_speed_options_keep_the_result(tmp_path: Path) -> None:
    """--recompute and --channels-last change how, not what; --amp bf16 trains (on the CPU) to nearby weights."""
    assert main(tiny_args(tmp_path / "plain")) == 0
    assert main(tiny_args(tmp_path / "fast", "--recompute", "--channels-last")) == 0
    assert main(tiny_args(tmp_path / "bf16", "--amp", "bf16")) == 0
    plain = final_weights(tmp_path / "plain")
    assert max_abs_diff(plain, final_weights(tmp_path / "fast")) < 1e-6
    bf16 = final_weights(tmp_path / "bf16")
    assert all(torch.isfinite(v).all() for v in bf16.values()) and max_abs_diff(plain, bf16) < 0.01


def test_image_folder_run_skips_corrupt_and_oversized_files(tmp_path: Path) -> None:
    from test_data import big_png, write_bad_files

    root = make_image_folder(tmp_path / "data", {"a": 6, "b": 6}, size=36)
    bad = write_bad_files(root / "train" / "b")
    big = big_png(root / "train" / "a" / "big.png", 10_000, 10_000)  # over PIL's 89.5 M pixels: never decoded
    out = tmp_path / "run"
    assert main(tiny_args(out, "--data", f"imagefolder:{root}", "--batch-size", "16", "--workers", "0")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_classes"] == 2 and summary["skipped_images"] == 4 and summary["oversized_images"] == 1
    assert sorted(summary["skipped_files"]) == sorted(str(p) for p in [*bad, big])


# ------------------------------------------------------------------ bad input: exit 2, one line


def bad_input_cases(tmp_path: Path) -> list[list[str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = make_image_folder(tmp_path / "noimg", {"a": 1})
    (no_images / "train" / "b").mkdir()
    unreadable = make_image_folder(tmp_path / "unreadable", {"a": 1, "b": 1})
    (unreadable / "train" / "b" / "0.png").write_text("not an image")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("batch_size: [\n")
    return [
        tiny_args(tmp_path / "o1", "--micro-batch-size", "3"),
        tiny_args(tmp_path / "o2", "--data", "imagefolder:/nonexistent/data"),
        tiny_args(tmp_path / "o3", "--data", f"imagefolder:{empty}"),
        tiny_args(tmp_path / "o4", "--data", f"imagefolder:{no_images}"),
        tiny_args(tmp_path / "o5", "--resume"),
        tiny_args(tmp_path / "o6", "--config", str(bad_yaml)),
        tiny_args(tmp_path / "o7", "--amp", "fp16", "--device", "cpu"),
        tiny_args(tmp_path / "o8", "--batch-size", "64"),
        tiny_args(tmp_path / "o9", "--data", "cifar"),
        tiny_args(tmp_path / "o10", "--epochs", "-1"),
        tiny_args(tmp_path / "o11", "--data", f"imagefolder:{unreadable}"),
    ]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for args in bad_input_cases(tmp_path):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("peffnet train: error: ") and err.count("\n") == 1, (args, err)
    assert "class 'b' has no readable image" in err  # the last case


def test_resume_checks_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    (out).mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x00" * 100)
    assert main(tiny_args(out, "--resume")) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    (out / "checkpoint.pt").unlink()
    assert main(tiny_args(out)) == 0
    assert main(tiny_args(out, "--resume", "--batch-size", "16")) == 2
    assert "trained with batch_size=8, this run has 16" in capsys.readouterr().err
    assert main(tiny_args(out, "--resume", "--norm", "ln")) == 2
    assert "trained with norm='gn'" in capsys.readouterr().err


def test_train_config_defaults_are_the_paper_recipe() -> None:
    c = TrainConfig()
    assert (c.epochs, c.momentum, c.eps, c.weight_decay, c.label_smoothing) == (350, 0.9, 1e-3, 1e-5, 0.1)
    assert PAPER_DEFAULTS["batch_size"] == 768 and PAPER_DEFAULTS["lr_scale"] == 1.0  # auto on image folders
    assert (c.warmup_epochs, c.decay_epochs, c.decay_rate, c.average_decay) == (5.0, 2.4, 0.97, 0.97)


def test_the_default_layout_is_the_faster_one_for_the_norm_and_device() -> None:
    """``channels_last`` left unset: NHWC on CUDA for the norms whose kernels run on it directly (BN, LN, LN+PN;
    scripts/device_check.py times both layouts on a GPU), NCHW for GN (F.group_norm copies NHWC to NCHW and
    back on CUDA) and on a CPU."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [prefers_channels_last(n, cuda) for n in ("bn", "ln", "lnpn", "gn", "gnpn")] == [True] * 3 + [False] * 2
    assert not any(prefers_channels_last(n, cpu) for n in ("bn", "ln", "lnpn", "gn", "gnpn"))
    assert TrainConfig.default("channels_last") is None and FinetuneConfig.default("channels_last") is None
