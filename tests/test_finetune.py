"""Fine-tuning (issue 5, paper Section 3.4): which parts train, frozen parts in eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peffnet.errors import ConfigError
from peffnet.finetune import finetuned_stage_indices, freeze_for_finetune
from peffnet.models import create_model


def tiny(norm: str = "bn") -> nn.Module:
    torch.manual_seed(0)
    return create_model("g16_efficientnet_b0", norm=norm, num_classes=10, resolution=32)


@pytest.mark.parametrize("stages, first", [(2, 5), (3, 3)])
def test_parts_start_at_a_downsampling_layer(stages: int, first: int) -> None:
    """Parts 2 and 3 reach back to (and include) the last and the second-last stride-2 layer."""
    model = tiny()
    indices = finetuned_stage_indices(stages)
    assert indices == list(range(first, 7))
    strides = [s[0].spatial[0].stride[0] for s in model.stages]
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
    model.train()
    assert not model.stem.training and not model.stages[4].training and not model.stages[0][0].spatial[1].training
    assert model.stages[5].training and model.head.training and model.head[1].training
    frozen_bn, trained_bn = model.stages[4][0].spatial[1], model.head[1]
    frozen_before, trained_before = frozen_bn.running_mean.clone(), trained_bn.running_mean.clone()
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    assert torch.equal(frozen_bn.running_mean, frozen_before)  # eval mode: statistics untouched
    assert not torch.equal(trained_bn.running_mean, trained_before)
    assert model.stem[0].weight.grad is None and model.stages[4][0].spatial[0].weight.grad is None
    assert model.stages[5][0].spatial[0].weight.grad is not None and model.classifier.weight.grad is not None
    model.eval()
    assert not model.head.training and not model.stem.training


@pytest.mark.parametrize("bad", [0, 4, -1, "2", 2.0, True])
def test_bad_depth(bad: object) -> None:
    with pytest.raises(ConfigError, match="--stages must be 1, 2 or 3"):
        finetuned_stage_indices(bad)  # type: ignore[arg-type]
