"""The fused training path of proxy normalization (paper Section 3.2, Eq. 4; docs/proxy_norm.md) equals the
plain per-layer computation: expansion PN scale folded into the spatial conv, spatial PN applied by the SE
gate, all moments of a forward in one batched call."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import checkpointed_grads_match
from peffnet import create_model
from peffnet.layers.blocks import SqueezeExcite
from peffnet.layers.proxy_norm import ProxyNormAct2d, prepare_proxy_norm, scale_inputs

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def randomized(norm: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("g16_efficientnet_b0", norm=norm, num_classes=10, drop_rate=0, drop_path_rate=0).double()
    with torch.no_grad():  # PN parameters off their initial values, so that every moment matters
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def unfused(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The network with every layer as a plain module call: each PN layer computes its own moments and applies
    Eq. 4 as its own pass, the SE gates the normalized activation."""
    x = model.stem(x)
    for stage in model.stages:
        for block in stage:
            h = block.project(block.se(block.spatial(block.expand(x))))
            x = x + h if block.has_residual else h
    return model.classifier(model.pool(model.head(x)).flatten(1))


@pytest.mark.parametrize("norm", ["lnpn", "gnpn"])
def test_fused_forward_and_gradients_equal_the_unfused_network(norm: str) -> None:
    model = randomized(norm)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    weights = torch.randn(3, 10, dtype=torch.float64)
    grads = []
    for forward in (unfused, lambda m, x: m(x)):
        model.zero_grad()
        out = forward(model, x)
        (out * weights).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (ref, ref_grads), (out, out_grads) = grads
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    pn_params = {id(p) for m in model.modules() if isinstance(m, ProxyNormAct2d) and m.act for p in m.parameters()}
    for p, g, g_ref in zip(model.parameters(), out_grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)
        if id(p) in pn_params:  # gamma, beta, gamma~, beta~ all get gradients
            assert g.abs().sum() > 0
    with torch.no_grad():  # eval (cached moments) takes the same fused path
        torch.testing.assert_close(model.eval()(x), unfused(model, x), rtol=1e-10, atol=1e-12)


def test_grad_checkpointing_computes_moments_per_layer_with_the_same_gradients() -> None:
    model = randomized("lnpn")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    checkpointed_grads_match(model, x, rtol=1e-8, atol=1e-10)  # float64 summation order


def test_prepared_moments_are_used_once_and_only_for_current_parameters() -> None:
    model = randomized("lnpn")
    layer = model.stem[1]
    prepare_proxy_norm(model)
    prepared = layer._pending[1]
    assert layer.proxy_affine()[0] is prepared and layer._pending is None  # taken once
    assert layer.proxy_affine()[0] is not prepared  # then computed by the layer
    prepare_proxy_norm(model)
    with torch.no_grad():
        layer.proxy_bias.add_(0.5)  # e.g. an optimizer step after the batched call: stale, not used
    fresh = layer.proxy_affine()[1]
    torch.testing.assert_close(fresh, ProxyNormAct2d.proxy_affine(layer)[1])
    assert not torch.equal(fresh, prepared)
    model.eval()
    with torch.no_grad():  # eval without gradients: nothing prepared, the layers' caches serve
        prepare_proxy_norm(model)
    assert all(m._pending is None for m in model.modules() if isinstance(m, ProxyNormAct2d))


def test_squeeze_excite_with_input_affine_and_scaled_conv_weights() -> None:
    torch.manual_seed(0)
    se = SqueezeExcite(8, 2).double()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    scale, shift = torch.rand(8, dtype=torch.float64) + 0.5, torch.randn(8, dtype=torch.float64)
    z = x * scale.view(-1, 1, 1) + shift.view(-1, 1, 1)
    torch.testing.assert_close(se(x, scale, shift), se(z))
    conv = torch.nn.Conv2d(8, 4, 3, stride=2, padding=1, groups=2, bias=False).double()  # zero padded, grouped
    torch.testing.assert_close(F.conv2d(x, scale_inputs(conv.weight, scale, 2), None, 2, 1, 1, 2),
                               conv(x * scale.view(-1, 1, 1)))


def test_centered_activation_in_bfloat16_sums_the_mean_gradient_in_float32() -> None:
    # a - E in place, for bfloat16 activations with the float32 moments: E's gradient is summed in float32
    torch.manual_seed(0)
    layer = ProxyNormAct2d(8)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4, 8, 16, 16)
    grads = []
    for dtype in (torch.float32, torch.bfloat16):
        layer.zero_grad()
        h, scale = layer.activate_centered(x.to(dtype))
        assert h.dtype == dtype and scale.dtype == torch.float32
        (h.float() * scale.view(-1, 1, 1)).square().mean().backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    for g32, g16 in zip(*grads, strict=True):
        torch.testing.assert_close(g16, g32, rtol=0.05, atol=0.02)
