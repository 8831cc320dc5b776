"""Fine-tuning (paper Section 3.4): which parts train, frozen parts in eval mode."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import peffnet.training.finetune as finetune_module
from peffnet.checkpoint import load_checkpoint, save_checkpoint
from peffnet.cli import main
from peffnet.data import build_dataset
from peffnet.errors import ConfigError
from peffnet.models import create_model
from peffnet.training.finetune import finetuned_stage_indices, freeze_for_finetune, frozen_modules
from peffnet.training.loop import train_mode
from resolution_helpers import TINY_FINETUNE, TINY_TRAIN
from train_helpers import after_update

pytestmark = pytest.mark.usefixtures("one_thread_module")


def tiny(norm: str = "bn") -> nn.Module:
    torch.manual_seed(0)
    return create_model("g16_efficientnet_b0", norm=norm, num_classes=10, resolution=32)


@pytest.mark.parametrize("stages, first", [(2, 5), (3, 3)])
def test_parts_start_at_a_downsampling_layer(stages: int, first: int) -> None:
    """Parts 2 and 3 reach back to (and include) the last and the second-last stride-2 layer."""
    model = tiny()
    indices = finetuned_stage_indices(stages)
    assert indices == list(range(first, 7))
    strides = [s[0].spatial.conv.stride[0] for s in model.stages]
    assert strides[first] == 2
    assert sum(st == 2 for st in strides[first:]) == stages - 1  # exactly stages-1 downsampling layers


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_trainable_parameters(stages: int) -> None:
    model = tiny()
    names = freeze_for_finetune(model, stages)
    prefixes = {n.split(".")[0] if not n.startswith("stages.") else ".".join(n.split(".")[:2]) for n in names}
    expected = {"head", "classifier"} | {f"stages.{i}" for i in finetuned_stage_indices(stages)}
    assert prefixes == expected
    assert all(p.requires_grad == (n in names) for n, p in model.named_parameters())


def test_frozen_parts_stay_in_eval_mode_and_keep_statistics() -> None:
    model = tiny("bn")
    freeze_for_finetune(model, 2)
    train_mode(model, frozen_modules(model, 2).values())
    assert not model.stem.training and not model.stages[4].training and not model.stages[0][0].spatial.norm.training
    assert model.stages[5].training and model.head.training and model.head.norm.training
    frozen_bn, trained_bn = model.stages[4][0].spatial.norm, model.head.norm
    frozen_before, trained_before = frozen_bn.running_mean.clone(), trained_bn.running_mean.clone()
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    assert torch.equal(frozen_bn.running_mean, frozen_before)  # eval mode: statistics untouched
    assert not torch.equal(trained_bn.running_mean, trained_before)
    assert model.stem.conv.weight.grad is None and model.stages[4][0].spatial.conv.weight.grad is None
    assert model.stages[5][0].spatial.conv.weight.grad is not None and model.classifier.weight.grad is not None
    model.eval()
    assert not model.head.training and not model.stem.training


@pytest.mark.parametrize("bad", [0, 4, -1, "2", 2.0, True])
def test_bad_depth(bad: object) -> None:
    with pytest.raises(ConfigError, match="stages must be 1, 2 or 3"):
        finetuned_stage_indices(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- runs (tiny, synthetic)


@pytest.fixture(scope="module")
def run(tiny_parent: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bool]]:
    """A fine-tuning at 64 px of parts 1-2, recording the preprocessing each dataset was built with."""
    out, transforms = tmp_path_factory.mktemp("ft") / "run", []

    def spy(spec: str, split: str, resolution: int, train_transform: bool, *a: object, **k: object) -> object:
        transforms.append(train_transform)
        return build_dataset(spec, split, resolution, train_transform, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetune_module, "build_dataset", spy)
        assert main(["finetune", str(tiny_parent), "--resolution", "64", "--stages", "2", "--out", str(out),
                     *TINY_FINETUNE]) == 0
    return out, transforms


def test_run_directory_and_summary(tiny_parent: Path, run: tuple[Path, list[bool]]) -> None:
    out, transforms = run
    assert transforms == [False, False]  # validation preprocessing for training too
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl", "metrics.csv", "summary.json", "tb"):
        assert (out / name).exists()
    s = json.loads((out / "summary.json").read_text())
    assert (s["train_resolution"], s["finetune_stages"], s["epochs"], s["steps"]) == (64, 2, 2, 4)
    assert (out / s["parent"]).resolve() == (tiny_parent / "checkpoint.pt").resolve()  # relative to the run
    assert s["parent_train_resolution"] == 32
    assert 0 <= s["top1"] <= 100 and s["trainable_params"] < s["params"]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["finetune_stages"] == 2 and state["train_resolution"] == 64
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.0  # vanilla SGD
    assert all(torch.equal(state["averaged"][k], v) for k, v in state["model"].items())


def test_only_the_chosen_parts_changed(tiny_parent: Path, run: tuple[Path, list[bool]]) -> None:
    before = load_checkpoint(tiny_parent / "checkpoint.pt")["averaged"]  # fine-tuning starts from the averaged weights
    after = load_checkpoint(run[0] / "checkpoint.pt")["model"]
    trained = ("head.", "classifier.", "stages.5.", "stages.6.")
    for k, v in before.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.startswith(trained) and k.endswith("weight") and v.ndim > 1:
            assert not torch.equal(after[k], v), k
        elif not k.startswith(trained):
            assert torch.equal(after[k], v), k


def test_a_run_keeps_the_frozen_statistics(tmp_path: Path) -> None:
    """A BN parent fine-tuned at depth 1: the frozen parts' running statistics (and batch counts) leave the run
    as they came, bit for bit, while the head's BN statistics move: the loop keeps frozen parts in eval mode."""
    parent = tmp_path / "parent"
    assert main(["train", *TINY_TRAIN, "--norm", "bn", "--subset", "8", "--val-subset", "8", "--out", str(parent)]) == 0
    assert main(["finetune", str(parent), "--resolution", "32", "--stages", "1", "--epochs", "1", *TINY_FINETUNE,
                 "--subset", "8", "--out", str(tmp_path / "ft")]) == 0
    before = load_checkpoint(parent / "checkpoint.pt")["averaged"]
    after = load_checkpoint(tmp_path / "ft" / "checkpoint.pt")["model"]
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    frozen = [k for k in stats if k.startswith(("stem.", "stages."))]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)
    assert not torch.equal(after["head.norm.running_mean"], before["head.norm.running_mean"])


def test_cosine_lr_from_scaled_reference(run: tuple[Path, list[bool]]) -> None:
    steps = [json.loads(line) for line in (run[0] / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in steps if r["kind"] == "step"]
    peak, total = 0.25 * 8 / 512, 4
    assert lrs == pytest.approx([peak * 0.5 * (1 + math.cos(math.pi * k / total)) for k in range(total)])


@pytest.mark.slow  # the signal path test_preemption.py checks, for fine-tuning
def test_sigterm_then_the_same_command_matches_uninterrupted(tiny_parent: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM during step 3 of 4: the step finishes, a checkpoint at step 3 is written, exit 143; the same
    command line then resumes it (``--resume auto``) to the uninterrupted weights, bit for bit."""
    args = [str(tiny_parent), "--resolution", "32", "--stages", "3", "--epochs", "1", *TINY_FINETUNE,
            "--batch-size", "4"]
    assert main(["finetune", *args, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    with after_update(3, lambda _: os.kill(os.getpid(), signal.SIGTERM)):
        assert main(["finetune", *args, "--out", str(tmp_path / "b")]) == 143
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"peffnet finetune: stopped by SIGTERM after step 3 (fine-tune epoch 1/1); checkpoint "
                       f"{tmp_path / 'b' / 'checkpoint.pt'} (step 3): the same command resumes it")
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 3
    assert main(["finetune", *args, "--out", str(tmp_path / "b")]) == 0
    for key in ("model", "averaged"):
        a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt")[key] for d in "ab")
        assert all(torch.equal(a[k], b[k]) for k in a), key
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if '"step"' in x and '"kind": "step"' in x] == [1, 2, 3, 4]


def test_a_finished_fine_tuning_says_why_it_cannot_go_on(tiny_parent: Path, run: tuple[Path, list[bool]],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", str(tiny_parent), "--resolution", "64", "--stages", "2", "--epochs", "3",
                 *TINY_FINETUNE, "--out", str(run[0])]) == 2
    err = capsys.readouterr().err
    assert "was trained for 2 epoch(s) and cannot go on to 3: the cosine learning rate spans all --epochs" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("extra, message", [
    (["--resolution", "16"], "resolution must be at least 32"),
    (["--resolution", "abc"], "resolution must be an integer"),
    (["--resolution", "64", "--stages", "4"], "stages must be 1, 2 or 3"),
    (["--resolution", "64", "--stages", "0"], "stages must be 1, 2 or 3"),
    (["--resolution", "64", "--model", "g16_efficientnet_b0"], "holds efficientnet_b0 (G1 E1 gn), not the requested"),
    (["--resolution", "64", "--norm", "lnpn"], "not the requested norm 'lnpn'"),
    (["--resolution", "64", "--data", "fashion-mnist"], "1 channel(s), but the checkpoint's efficientnet_b0"),
    (["--resolution", "64", "--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a CUDA device"),
    (["--resolution", "64", "--lr", "-1"], "lr must be a positive number"),
])
def test_bad_input(tiny_parent: Path, tmp_path: Path, extra: list[str], message: str,
                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", str(tiny_parent), "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "x" / "checkpoint.pt").exists()


def test_missing_or_mismatched_checkpoint(tiny_parent: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", str(tmp_path / "none.pt"), "--resolution", "64", "--out", str(tmp_path / "x")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    state = load_checkpoint(tiny_parent / "checkpoint.pt")
    state["averaged"]["classifier.weight"] = torch.zeros(3, 7)  # weights of another shape than its config
    save_checkpoint(tmp_path / "bad.pt", state)
    assert main(["finetune", str(tmp_path / "bad.pt"), "--resolution", "64", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "classifier.weight has shape (3, 7)" in err and err.count("\n") == 1
