"""Weight decay where the paper puts it (Section 3.2/3.4; docs/reference.md): conv/linear weights and PN's
gamma~/beta~ decay; normalization gamma/beta (PN's included) and biases do not."""

from __future__ import annotations

import pytest
import torch
from timm.optim import RMSpropTF
from torch import nn

from peffnet import create_model
from peffnet.runtime.optim import OPTIMIZERS, build_optimizer, param_groups


def groups_by_name(model: nn.Module, weight_decay: float = 1e-5) -> tuple[set[str], set[str]]:
    groups = param_groups(model, weight_decay)
    assert [g["weight_decay"] for g in groups] == [weight_decay, 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in groups[0]["params"]}, {names[id(p)] for p in groups[1]["params"]}


@pytest.mark.parametrize("norm", ["lnpn", "gnpn", "gn", "bn"])
def test_decay_on_kernels_and_proxy_params_only(norm: str) -> None:
    model = create_model("g16_efficientnet_b0", norm=norm, num_classes=10)
    decay, no_decay = groups_by_name(model)
    assert decay.isdisjoint(no_decay) and decay | no_decay == {n for n, _ in model.named_parameters()}
    modules = dict(model.named_modules())
    for name in decay | no_decay:
        owner, leaf = modules[name.rpartition(".")[0]], name.rpartition(".")[2]
        kernel = isinstance(owner, (nn.Conv2d, nn.Linear)) and leaf == "weight"
        expected = kernel or leaf in ("proxy_weight", "proxy_bias")
        assert (name in decay) == expected, name
    if norm.endswith("pn"):
        assert {"stem.norm.proxy_weight", "stem.norm.proxy_bias"} <= decay
        assert {"stem.norm.weight", "stem.norm.bias", "stages.0.0.project.norm.weight"} <= no_decay
    assert {"classifier.weight", "stem.conv.weight", "stages.1.0.se.reduce.weight"} <= decay
    assert {"classifier.bias", "stages.1.0.se.reduce.bias"} <= no_decay


def test_frozen_parameters_are_left_out() -> None:
    model = create_model("g16_efficientnet_b0", norm="lnpn", num_classes=10)
    model.stem.requires_grad_(False)
    decay, no_decay = groups_by_name(model)
    assert not any(n.startswith("stem.") for n in decay | no_decay)


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, RMSpropTF])
def test_a_step_with_zero_gradients_shrinks_exactly_the_decayed_group(optimizer) -> None:
    model = create_model("g16_efficientnet_b0", norm="lnpn", num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # PN's gamma~/beta~ start at 0: make decay visible on them too
    groups = param_groups(model, weight_decay=0.1)
    before = [[p.detach().clone() for p in g["params"]] for g in groups]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer(groups, lr=0.5).step()
    for p, old in zip(groups[0]["params"], before[0], strict=True):  # pulled towards 0 by the decay alone
        assert ((p.abs() < old.abs()) | (old == 0)).all()  # (a weight drawn at exactly -0.1 is now 0)
    for p, old in zip(groups[1]["params"], before[1], strict=True):
        assert torch.equal(p, old)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_build_optimizer_uses_the_recipe_s_parameter_groups(name: str) -> None:
    model = create_model("g16_efficientnet_b0", norm="bn", num_classes=10)
    opt = build_optimizer(name, model, lr=0.01, decay=0.99, weight_decay=1e-5)
    assert type(opt) is {"rmsprop_tf": RMSpropTF, "adam": torch.optim.Adam}[name]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-5, 0.0]
    assert all(g["lr"] == 0.01 for g in opt.param_groups)


def test_the_multi_tensor_rmsprop_gives_the_per_tensor_loop_s_bits() -> None:
    """The recipe's optimizer runs timm's foreach form on every device (also a CPU, where timm would loop);
    three steps of both forms end in the same weights, bit for bit."""
    torch.manual_seed(0)
    models = [create_model("efficientnet_b0", norm="lnpn", num_classes=10) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fast = build_optimizer("rmsprop_tf", models[0], lr=0.01, decay=0.99, weight_decay=1e-5)
    loop = RMSpropTF(param_groups(models[1], 1e-5), lr=0.01, alpha=0.99, eps=1e-3, momentum=0.9, foreach=False)
    assert all(g["foreach"] for g in fast.param_groups)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in models[0].parameters()]
        for model in models:
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
        fast.step()
        loop.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
