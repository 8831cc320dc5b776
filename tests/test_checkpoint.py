"""Checkpoints: atomic writes, validated reads, models rebuilt from them."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import torch

from peffnet.checkpoint import FORMAT, load_checkpoint, load_weights, model_from_checkpoint, save_checkpoint
from peffnet.errors import ConfigError
from peffnet.models import build, preset


def tiny_state() -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    cfg = preset("efficientnet_b0", norm="gn", num_classes=3, in_chans=1)
    model = build(cfg)
    averaged = {k: v * 0.5 for k, v in model.state_dict().items()}
    state = {"format": FORMAT, "model_config": dataclasses.asdict(cfg), "model": model.state_dict(),
             "averaged": averaged, "epoch": 1, "step": 10, "train_resolution": 32, "num_classes": 3}
    return model, state


def test_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    model, state = tiny_state()
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, state)
    state["step"] = 11
    save_checkpoint(path, state)
    assert os.listdir(path.parent) == ["checkpoint.pt"]  # no temporary file left behind
    loaded = load_checkpoint(path)
    assert loaded["step"] == 11
    rebuilt, _ = model_from_checkpoint(path)
    assert not rebuilt.training and rebuilt.cfg.in_chans == 1
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, state["averaged"][k])
    live, _ = model_from_checkpoint(loaded, averaged=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in live.state_dict().items())


def test_failed_write_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    _, state = tiny_state()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises, the old file must survive
        save_checkpoint(path, {**state, "bad": lambda: None})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.pt"]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "cannot read checkpoint"),
    (b"certainly not a zip file", "cannot read checkpoint"),
    ({"some": "dict"}, "not a peffnet checkpoint"),
    ({"format": FORMAT}, "missing model_config"),
])
def test_unreadable_checkpoints_are_one_line_errors(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "checkpoint.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=message) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    _, state = tiny_state()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_mismatched_weights() -> None:
    model, state = tiny_state()
    other = build(preset("efficientnet_b0", norm="gn", num_classes=5, in_chans=1))
    with pytest.raises(ConfigError, match="classifier.weight has shape"):
        load_weights(other, state["model"])
    with pytest.raises(ConfigError, match="1 missing"):
        load_weights(model, {k: v for k, v in state["model"].items() if k != "classifier.bias"})


@pytest.mark.parametrize("norm", ["bn", "lnpn"])
def test_a_v1_checkpoint_loads_with_todays_keys(tmp_path: Path, norm: str) -> None:
    """Before the conv and norm of ConvNormAct had names, their keys were indices (``stem.0.weight``)."""
    from peffnet.checkpoint import V1

    torch.manual_seed(0)
    model = build(preset("g16_efficientnet_b0", norm=norm, num_classes=10))
    old = {re.sub(r"(stem|expand|spatial|project|head)\.conv\.", r"\1.0.", k): v for k, v in model.state_dict().items()}
    old = {re.sub(r"(stem|expand|spatial|project|head)\.norm\.", r"\1.1.", k): v for k, v in old.items()}
    assert "stem.0.weight" in old and "stages.1.0.spatial.1.weight" in old and "stages.0.0.se.reduce.weight" in old
    state = {"format": V1, "model_config": dataclasses.asdict(model.cfg), "model": old, "averaged": old,
             "epoch": 1, "step": 1, "train_resolution": 32, "num_classes": 10}
    save_checkpoint(tmp_path / "v1.pt", state)
    rebuilt, loaded = model_from_checkpoint(tmp_path / "v1.pt")
    assert loaded["format"] == FORMAT and list(loaded["model"]) == list(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x))
    save_checkpoint(tmp_path / "v0.pt", {**state, "format": "peffnet-checkpoint-v0"})
    with pytest.raises(ConfigError, match="not a peffnet checkpoint .format 'peffnet-checkpoint-v0'; this peffnet"):
        load_checkpoint(tmp_path / "v0.pt")
