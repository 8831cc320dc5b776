"""The fused training form of proxy norm (paper Section 3.2, Eq. 4; ``peffnet.fuse_proxy_norm``) computes what the
plain model computes: outputs and every gradient, in training and eval, with gradient checkpointing and
micro-batching; it shares the plain model's Parameters and state_dict keys."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from conftest import randomize
from peffnet import create_model, fold_proxy_norm, fuse_proxy_norm
from peffnet.fusion.fuse import FusedConvNormAct, FusedMBConv, ProxyAffineTable
from peffnet.fusion.ops import cropped_conv2d
from peffnet.layers.blocks import MBConv
from peffnet.layers.proxy_moments import _ProxyMoments
from peffnet.layers.proxy_norm import ProxyNormAct2d

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def plain_model(norm: str = "lnpn") -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("g16_efficientnet_b0", norm=norm, num_classes=10, drop_rate=0, drop_path_rate=0)
    return randomize(model.double())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def outputs_and_grads(model: torch.nn.Module, xs: list[torch.Tensor], weights: torch.Tensor) -> tuple:
    """Logits of every input, then one backward of their weighted sum (several forwards, one backward)."""
    model.zero_grad()
    outs = [model(x) for x in xs]
    sum((out * weights).sum() for out in outs).backward()
    return [out.detach() for out in outs], {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("norm", ["lnpn", "gnpn"])
def test_fused_outputs_and_gradients_equal_the_plain_model(norm: str, mode: str, checkpointing: bool) -> None:
    plain = plain_model(norm)
    fused = fuse_proxy_norm(copy.deepcopy(plain))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=gen)
    weights = torch.randn(3, 10, dtype=torch.float64, generator=gen)
    results = []
    for model in (plain, fused):
        model.train(mode == "train").set_grad_checkpointing(checkpointing)
        results.append(outputs_and_grads(model, [x], weights))
    (ref, ref_grads), (out, grads) = results
    assert rel(out[0], ref[0]) < 1e-10
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert rel(g, ref_grads[name]) < 1e-10, name
        assert g.abs().sum() > 0, name  # every parameter, gamma~ and beta~ included, gets a gradient
    if mode == "eval":  # without gradients: the layers' eval caches, and the fused in-place gating
        with torch.no_grad():
            assert rel(fused(x), plain(x)) < 1e-10
        with torch.inference_mode():
            assert rel(fused(x), ref[0]) < 1e-10


@pytest.mark.parametrize("checkpointing", [False, True])
def test_micro_batches_two_forwards_then_one_backward(checkpointing: bool) -> None:
    # each forward has its own graph of the moments; recomputed blocks of the first forward are exact too
    plain = plain_model()
    fused = fuse_proxy_norm(copy.deepcopy(plain))
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=gen) for _ in range(2)]
    weights = torch.randn(2, 10, dtype=torch.float64, generator=gen)
    (ref, ref_grads), (out, grads) = (outputs_and_grads(m.set_grad_checkpointing(checkpointing) or m, xs, weights)
                                      for m in (plain, fused))
    for a, b in zip(out, ref, strict=True):
        assert rel(a, b) < 1e-10
    for name, g in grads.items():
        assert rel(g, ref_grads[name]) < 1e-10, name


def test_fused_model_shares_parameters_and_state_dict_keys() -> None:
    model = plain_model()
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    assert fuse_proxy_norm(model) is model
    assert isinstance(model.stem, FusedConvNormAct) and isinstance(model.head, FusedConvNormAct)
    assert all(isinstance(b, FusedMBConv) for stage in model.stages for b in stage)
    assert list(model.state_dict()) == keys
    fused_params = dict(model.named_parameters())
    assert fused_params.keys() == params.keys() and all(fused_params[n] is p for n, p in params.items())
    assert fuse_proxy_norm(model) is model and list(model.state_dict()) == keys  # idempotent


def test_deep_copy_of_a_fused_model_has_its_own_table() -> None:
    # e.g. the weight average of training: the copy's blocks, stem hook and table refer to the copy's layers
    plain = plain_model()
    fused = fuse_proxy_norm(copy.deepcopy(plain))
    twin = copy.deepcopy(fused)
    table = twin.stem.table
    assert table is not fused.stem.table and all(b.table is table for stage in twin.stages for b in stage)
    layers = set(twin.modules())
    assert all(layer in layers for layer in table.layers)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    weights = torch.randn(2, 10, dtype=torch.float64)
    (ref, ref_grads), (out, grads) = (outputs_and_grads(m, [x], weights) for m in (plain, twin))
    assert rel(out[0], ref[0]) < 1e-10 and all(rel(g, ref_grads[n]) < 1e-10 for n, g in grads.items())


def test_state_dict_of_either_form_loads_into_the_other() -> None:
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    source = plain_model().eval()
    with torch.no_grad():
        ref = source(x)
    fused = fuse_proxy_norm(create_model("g16_efficientnet_b0", norm="lnpn", num_classes=10).double()).eval()
    fused.load_state_dict(source.state_dict())
    plain = create_model("g16_efficientnet_b0", norm="lnpn", num_classes=10).double().eval()
    plain.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert rel(fused(x), ref) < 1e-10 and torch.equal(plain(x), ref)


def moment_calls(run: Callable[[], object]) -> list[int]:
    """The channel count of every computation of the proxy moments while ``run()`` runs, in order: each is one
    application of ``_ProxyMoments`` (the autograd Function of Eq. 4), counted by wrapping its ``apply``."""
    calls, apply = [], _ProxyMoments.apply

    def counted(gamma: torch.Tensor, *args: object) -> object:
        calls.append(gamma.shape[0])
        return apply(gamma, *args)

    _ProxyMoments.apply = counted
    try:
        run()
    finally:
        _ProxyMoments.apply = apply
    return calls


def test_moments_of_a_forward_are_one_batched_call() -> None:
    """O(channels), whatever the batch and resolution (Section 3.2): the fused form computes the moments of all
    33 PN layers of a training forward in one call, not again when checkpointed blocks are recomputed, and
    not at all in eval without gradients once cached. The plain model computes them per layer."""
    plain = create_model("g16_efficientnet_b0", norm="lnpn", num_classes=10)
    channels = [m.channels for m in plain.modules() if isinstance(m, ProxyNormAct2d)]
    assert len(channels) == 33 and sum(channels) == 13248
    assert moment_calls(lambda: plain(torch.randn(2, 3, 32, 32)).sum().backward()) == channels
    fused = fuse_proxy_norm(plain)
    for checkpointing, (batch, res) in ((False, (1, 32)), (False, (2, 64)), (True, (2, 32))):
        fused.set_grad_checkpointing(checkpointing)
        x = torch.randn(batch, 3, res, res)
        assert moment_calls(lambda x=x: fused(x).sum().backward()) == [13248]
    fused.eval()
    with torch.no_grad():
        assert sum(moment_calls(lambda: fused(torch.randn(1, 3, 32, 32)))) == 13248  # every channel once, cached
        assert moment_calls(lambda: fused(torch.randn(1, 3, 32, 32))) == []


def test_fuse_leaves_other_models_alone_and_fold_refuses_a_fused_model() -> None:
    gn = create_model("g16_efficientnet_b0", norm="gn", num_classes=10)
    modules = list(gn.modules())
    assert fuse_proxy_norm(gn) is gn and list(gn.modules()) == modules
    with pytest.raises(ValueError, match="rewrites peffnet EfficientNets and their backbones, not Sequential"):
        fuse_proxy_norm(torch.nn.Sequential(ProxyNormAct2d(4)))
    fused = fuse_proxy_norm(create_model("g16_efficientnet_b0", norm="lnpn", num_classes=10)).eval()
    with pytest.raises(ValueError, match="folds the plain model, not a fused one") as info:
        fold_proxy_norm(fused)
    assert "\n" not in str(info.value)


def test_fused_block_under_bfloat16_autocast_keeps_float32_gradient_accuracy() -> None:
    # a - E with bfloat16 activations and float32 moments: E's gradient is summed in float32, so the PN
    # parameters' gradients are as close to float32's as the plain block's are
    torch.manual_seed(0)
    block = randomize(MBConv(16, 24, 3, 1, 4, 16, 4, "lnpn"))  # no residual: the output stays bfloat16
    plain = copy.deepcopy(block)
    table = ProxyAffineTable([m for m in block.modules() if isinstance(m, ProxyNormAct2d)])
    fused = FusedMBConv(block, table)
    x = torch.randn(8, 16, 32, 32)
    errors = {}
    for name, net in (("plain", plain), ("fused", fused)):
        grads = []
        for bf16 in (False, True):
            net.zero_grad()
            table.refresh()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = net(x)
            assert out.dtype == (torch.bfloat16 if bf16 else torch.float32)
            out.float().square().mean().backward()
            grads.append({n: p.grad.clone() for n, p in net.named_parameters() if "norm" in n})
        errors[name] = max(((grads[1][n] - g).norm() / g.norm()).item() for n, g in grads[0].items())
    assert errors["fused"] < 0.05 and errors["plain"] < 0.05, errors


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_cropped_conv_equals_the_full_conv(size: int, stride: int, kernel: int) -> None:
    # maps smaller than the kernel (the last stages at 32 px) use fewer taps; outputs and gradients are the same
    gen = torch.Generator().manual_seed(size * 10 + stride)
    x = torch.randn(2, 8, size, size, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(8, 4, kernel, kernel, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, generator=gen, requires_grad=True)
    args = ((stride, stride), (kernel // 2, kernel // 2), (1, 1), 2)
    results = []
    for conv in (torch.nn.functional.conv2d, cropped_conv2d):
        out = conv(x, w, b, *args)
        grads = torch.autograd.grad((out * out.detach().cos()).sum(), (x, w, b))
        results.append((out, *grads))
    for ref, got in zip(*results, strict=True):
        assert got.shape == ref.shape and rel(got, ref) < 1e-12
