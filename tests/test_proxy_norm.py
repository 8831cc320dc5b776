"""Proxy-normalized activations (paper Section 3.2, Eq. 3-4, Appendix C): moments, layer, cache, folding."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, special

import peffnet
from conftest import randomize
from peffnet import create_model, fold_proxy_norm, fuse_proxy_norm, proxy_norm_moments
from peffnet.fusion.fold import CenteredConv2d, FoldedNormAct2d, FoldedSqueezeExcite
from peffnet.layers.blocks import ConvNormAct, SqueezeExcite
from peffnet.layers.norm_act import ScaledGroupNorm
from peffnet.layers.proxy_norm import ProxyNormAct2d
from peffnet.models import build, preset

ROOT = Path(__file__).resolve().parents[1]
EXACT = {"swish": lambda u: u * special.expit(u), "gelu": lambda u: u * special.ndtr(u),
         "relu": lambda u: np.maximum(u, 0.0)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def exact_moments(act: str, mu: float, sigma: float) -> tuple[float, float]:
    """E and Var of act(mu + sigma Z) by adaptive quadrature, split at the bend."""
    f, z0 = EXACT[act], -mu / sigma

    def expect(g):
        return integrate.quad(lambda z: g(mu + sigma * z) * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi), -14, 14,
                              points=[z0] if abs(z0) < 14 else None, limit=400, epsabs=1e-13, epsrel=1e-12)[0]

    mean = expect(f)
    return mean, expect(lambda u: (f(u) - mean) ** 2)


def box_params(n: int, seed: int = 0) -> np.ndarray:
    """Corners of the box proxy_norm_moments is specified for (gamma [0.1, 5], beta [-3, 3], gamma~ [-0.5, 1],
    beta~ [-1, 1]) + random."""
    rng = np.random.default_rng(seed)
    lo, hi = np.array([0.1, -3, -0.5, -1]), np.array([5, 3, 1, 1])
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    # points where sigma = gamma (1 + gamma~) sits on either side of the switch between the two rules
    switch = np.array([[1.25, b, 0.0, bt] for b in (-1.0, 0.0, 2.0) for bt in (-0.5, 0.5)])
    switch = np.concatenate([switch * [1 - 1e-6, 1, 1, 1], switch * [1 + 1e-6, 1, 1, 1]])
    return np.concatenate([corners, switch, lo + (hi - lo) * rng.random((n, 4))])


@pytest.mark.parametrize("act", ["swish", "gelu", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_moments_match_adaptive_quadrature(act: str, dtype: torch.dtype) -> None:
    params = box_params(60)
    mean, var = proxy_norm_moments(act, *(torch.tensor(params[:, i], dtype=dtype) for i in range(4)))
    assert mean.dtype == dtype and mean.shape == (len(params),)
    for (g, b, gt, bt), m, v in zip(params, mean.tolist(), var.tolist(), strict=True):
        ref_m, ref_v = exact_moments(act, g * bt + b, abs(g * (1 + gt)))
        assert abs(m - ref_m) <= max(1e-3, 0.01 * abs(ref_m)), (act, g, b, gt, bt, m, ref_m)
        assert abs(v - ref_v) <= max(1e-3, 0.01 * abs(ref_v)), (act, g, b, gt, bt, v, ref_v)


def test_relu_moments_match_closed_form_and_known_values() -> None:
    # relu(Z), Z ~ N(0, 1): mean 1/sqrt(2 pi), variance 1/2 - 1/(2 pi); swish at gamma -> 0 is swish(beta)
    mean, var = proxy_norm_moments("relu", *(torch.tensor([v], dtype=torch.float64) for v in (1.0, 0.0, 0.0, 0.0)))
    assert mean.item() == pytest.approx(1 / np.sqrt(2 * np.pi), rel=1e-6)
    assert var.item() == pytest.approx(0.5 - 1 / (2 * np.pi), rel=1e-5)
    mean, var = proxy_norm_moments("swish", *(torch.tensor([v], dtype=torch.float64) for v in (1e-4, 1.5, 0.0, 0.0)))
    assert mean.item() == pytest.approx(1.5 * special.expit(1.5), rel=1e-6) and var.item() < 1e-7


@pytest.mark.parametrize("act", ["swish", "gelu", "relu"])
def test_moments_gradcheck_all_four_parameters(act: str) -> None:
    params = torch.tensor(box_params(24, seed=1)[-24:], dtype=torch.float64)  # random points, off the switch
    sigma = (params[:, 0] * (1 + params[:, 2])).abs()
    assert (sigma <= 1.25).any() and (sigma > 1.25).any()
    inputs = tuple(params[:, i].clone().requires_grad_() for i in range(4))
    assert torch.autograd.gradcheck(lambda *p: proxy_norm_moments(act, *p), inputs)


def test_moments_broadcast_and_bad_activation() -> None:
    gamma = torch.ones(2, 3)
    mean, var = proxy_norm_moments("swish", gamma, torch.zeros(3), torch.zeros(()), torch.zeros(2, 1))
    assert mean.shape == var.shape == (2, 3)
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        proxy_norm_moments("tanh", gamma, gamma, gamma, gamma)


def eq4(x: torch.Tensor, layer: ProxyNormAct2d, params: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """Eq. 3-4 written out with plain autograd ops: LN/GN without affine, gamma/beta, swish, proxy moments."""
    gamma, beta, gamma_t, beta_t = params or (layer.weight, layer.bias, layer.proxy_weight, layer.proxy_bias)
    g = x.reshape(x.shape[0], layer.groups, -1)
    y = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-3)).view_as(x)
    mean, var = proxy_norm_moments("swish", gamma, beta, gamma_t, beta_t)
    a = F.silu(y * gamma.view(-1, 1, 1) + beta.view(-1, 1, 1))
    return (a - mean.view(-1, 1, 1)) / torch.sqrt(var.view(-1, 1, 1) + 3e-2)


@pytest.mark.parametrize("groups", [1, 4])
def test_layer_is_eq4_with_the_documented_parameters(groups: int) -> None:
    layer = ProxyNormAct2d(8, groups=groups).double()
    assert {n for n, _ in layer.named_parameters()} == {"weight", "bias", "proxy_weight", "proxy_bias"}
    assert layer.proxy_weight.abs().sum() == 0 and layer.proxy_bias.abs().sum() == 0
    assert (layer.eps, layer.proxy_eps) == (1e-3, 3e-2)
    randomize(layer)
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x.clone()), eq4(x, layer))
    # gradients (custom in-place affine + moments backward) against autograd through the plain formula
    names = ("weight", "bias", "proxy_weight", "proxy_bias")

    def library(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params, strict=True)), (x * 1.0,))

    inputs = (x.requires_grad_(), *(getattr(layer, n).detach().clone().requires_grad_() for n in names))
    assert torch.autograd.gradcheck(library, inputs)
    out, ref = library(*inputs), eq4(inputs[0], layer, inputs[1:])
    weights = torch.randn_like(out)
    for g_lib, g_ref in zip(torch.autograd.grad((out * weights).sum(), inputs),
                            torch.autograd.grad((ref * weights).sum(), inputs), strict=True):
        torch.testing.assert_close(g_lib, g_ref)


@pytest.mark.parametrize("groups", [1, 4])
def test_projection_norm_has_scale_no_shift_no_pn(groups: int) -> None:
    layer = ScaledGroupNorm(8, groups=groups)
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    randomize(layer)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(layer(x), F.group_norm(x, groups, eps=1e-3) * layer.weight.view(-1, 1, 1))


@pytest.mark.parametrize("train", [True, False])
def test_layer_traces_with_the_moments_as_one_leaf_call(train: bool) -> None:
    """Under ``torch.fx`` symbolic tracing the moments are one call of ``swish_proxy_affine`` (not traced into,
    and not served from the eval cache): the traced layer computes the layer's output and gradients."""
    layer = randomize(ProxyNormAct2d(8, groups=4).double()).train(train)
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        ref = layer(x.clone())  # in eval mode: fills the cache before tracing
    graph = torch.fx.symbolic_trace(layer)
    calls = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert calls.count(peffnet.layers.swish_proxy_affine) == 1
    out = graph(x.clone())
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    fx_grads = [p.grad.clone() for p in layer.parameters()]  # the graph holds the layer's own parameters
    layer.zero_grad()
    layer(x.clone()).square().sum().backward()
    for a, b in zip(fx_grads, (p.grad for p in layer.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 4])
def test_scripted_proxy_norm_trains_like_the_eager_layer(groups: int) -> None:
    """Under TorchScript the moments are :func:`~peffnet.layers.proxy_moments.proxy_affine_ops`: the same values
    and, through autograd, the same gradients as the eager layer's hand-written backward."""
    layer = randomize(ProxyNormAct2d(8, groups=groups).double())
    scripted = torch.jit.script(layer)
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    weights = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    results = []
    for module in (layer, scripted):
        module.zero_grad()
        xg = x.clone().requires_grad_()
        out = module(xg)
        (out * weights).sum().backward()
        results.append((out.detach(), xg.grad, *(p.grad.clone() for p in module.parameters())))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_layer_keeps_bfloat16_activations_in_bfloat16() -> None:
    layer = randomize(ProxyNormAct2d(8)).to(torch.bfloat16)
    x = torch.randn(2, 8, 4, 4)
    out = layer(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and layer.proxy_affine()[0].dtype == torch.float32  # moments in float32
    torch.testing.assert_close(out.float(), layer.float()(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("norm", ["lnpn", "gnpn"])
def test_placement_in_the_network(norm: str) -> None:
    """stem, expansion, spatial and head: norm + PN-swish; projection: scale-only norm; SE: plain swish."""
    model = create_model("g16_efficientnet_b0", norm=norm)
    groups = 1 if norm == "lnpn" else 4
    blocks = [b for stage in model.stages for b in stage]
    with_pn = [model.stem, model.head, *(b.spatial for b in blocks), *(b.expand for b in blocks
                                                                      if isinstance(b.expand, ConvNormAct))]
    assert all(isinstance(m.norm, ProxyNormAct2d) and m.norm.groups == groups for m in with_pn)
    assert all(type(b.project.norm) is ScaledGroupNorm and b.project.norm.groups == groups for b in blocks)
    assert all(type(b.se) is SqueezeExcite and not any(isinstance(m, ProxyNormAct2d) for m in b.se.modules())
               for b in blocks)
    pn = [m for m in model.modules() if isinstance(m, ProxyNormAct2d)]
    assert len(pn) == len(with_pn) == 33


@pytest.mark.slow  # 48 builds on the meta device; the PN models' forward checks: test_timm_contract.py (B7 LN+PN's
def test_every_preset_builds_with_pn() -> None:  # shapes on the meta device, real B0s and B1 GN+PN in both modes)
    for name, norm in itertools.product(peffnet.list_models(), ["lnpn", "gnpn"]):
        with torch.device("meta"):
            model = create_model(name, norm=norm)
        assert any(isinstance(m, ProxyNormAct2d) for m in model.modules()), name


def test_eval_cache_computed_once_and_refreshed_on_change() -> None:
    layer = ProxyNormAct2d(6)
    randomize(layer)
    x = torch.randn(2, 6, 3, 3)
    layer.eval()
    with torch.no_grad():
        first = layer.proxy_affine()
        assert layer.proxy_affine()[0] is first[0]  # cached: the very same tensor
        y = layer(x.clone())
        layer.proxy_weight.add_(0.5)  # an optimizer-style in-place update bumps the version counter
        second = layer.proxy_affine()
        assert second[0] is not first[0] and not torch.equal(second[0], first[0])
        assert not torch.equal(layer(x.clone()), y)
        layer.load_state_dict(ProxyNormAct2d(6).state_dict())  # fresh parameters: moments follow
        torch.testing.assert_close(layer(x.clone()), eq4(x, layer))
        layer.proxy_bias.data = torch.ones(6)  # new storage
        torch.testing.assert_close(layer(x.clone()), eq4(x, layer))
        layer.double()
        assert layer.proxy_affine()[0].dtype == torch.float64
    # training mode never caches, and gradients reach the PN parameters
    layer.float().train()
    assert layer.proxy_affine()[0] is not layer.proxy_affine()[0]
    layer(x).sum().backward()
    assert layer.proxy_weight.grad is not None
    # eval with gradients wanted (e.g. a frozen-but-trainable part): no stale, gradient-less cache
    layer.eval().zero_grad()
    (layer(x.clone()) * torch.randn(2, 6, 3, 3)).sum().backward()
    assert layer.proxy_bias.grad.abs().sum() > 0


def test_cache_in_inference_mode_does_not_leak_into_autograd() -> None:
    layer = ProxyNormAct2d(4).eval().requires_grad_(False)
    x = torch.randn(2, 4, 3, 3)
    with torch.inference_mode():
        y = layer(x.clone())
    xg = x.clone().requires_grad_()
    out = layer(xg * 1.0)  # frozen layer, input needs gradients: must not reuse inference tensors
    out.sum().backward()
    torch.testing.assert_close(out.detach(), y)
    assert xg.grad is not None


@pytest.mark.parametrize("fused", [False, True])
def test_channels_last_matches(fused: bool) -> None:
    torch.manual_seed(0)
    model = create_model("g16_efficientnet_b0", norm="lnpn", num_classes=10, drop_rate=0, drop_path_rate=0)
    randomize(model)
    x = torch.randn(2, 3, 64, 64)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    ref = model(x)
    ref.sum().backward()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    model_cl.zero_grad()
    out = (fuse_proxy_norm(model_cl) if fused else model_cl)(x_cl)
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model_cl.stem.norm.proxy_weight.grad, model.stem.norm.proxy_weight.grad,
                               rtol=1e-3, atol=1e-4)
    if not fused:
        folded = fold_proxy_norm(copy.deepcopy(model_cl).eval())
        with torch.no_grad():
            torch.testing.assert_close(folded(x_cl), model.eval()(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # torch._dynamo traces a quarter-depth B0 twice: ~10 s on 2 cores
def test_b0_traces_without_graph_breaks() -> None:
    """One graph each for an eval forward and the folded model: nothing falls back to eager; B0 at a quarter of its
    depth (one block of each of its 7 stages: every kind of block but the residual ones, 7 instead of 16). The
    training forward and backward are captured with ``fullgraph=True`` by the GPU check's ``compile``, which its dry
    run on the CPU runs on the same model (tests/test_device_check.py)."""
    model = build(dataclasses.replace(preset("g16_efficientnet_b0", norm="lnpn", num_classes=10), depth=0.25))
    x = torch.randn(2, 3, 32, 32)
    for mode in ("eval", "folded"):
        if mode == "folded":
            model = fold_proxy_norm(model)
        else:
            model.eval()
        explained = torch._dynamo.explain(model)(x)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (mode, explained.break_reasons)


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    """A small conv + LN-PN + GN-scale stack through TorchDynamo and AOTAutograd (``aot_eager``: the joint graph
    of the moments' autograd Function, forward and backward, run by PyTorch's kernels). Inductor's code
    generation is left to the GPU check (scripts/device_check.py, ``compile``): on a CPU with a cold cache, as
    in CI, even this stack's C++ takes 20 s to build."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), ProxyNormAct2d(8), torch.nn.Conv2d(8, 8, 1),
                              ScaledGroupNorm(8, groups=4))
    randomize(net)
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(net, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in net[1].parameters()]
    net.zero_grad()
    ref = net(x)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for g, p in zip(grads, net[1].parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x), net.eval()(x))


@pytest.mark.parametrize("norm", ["lnpn", "gnpn"])
@pytest.mark.parametrize("name", ["g16_efficientnet_b0", "efficientnet_b0"])
def test_fold_is_exact_and_removes_every_moment(name: str, norm: str, monkeypatch) -> None:
    model = create_model(name, norm=norm, num_classes=10).double()
    randomize(model)
    model.eval()
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    small = torch.randn(2, 3, 40, 48, dtype=torch.float64)
    with torch.no_grad():
        ref, ref_small = model(x), model(small)
        ref32 = copy.deepcopy(model).float()(x.float())
    folded = fold_proxy_norm(copy.deepcopy(model))
    folded32 = fold_proxy_norm(copy.deepcopy(model).float())
    assert not any(isinstance(m, ProxyNormAct2d) for m in folded.modules())
    blocks = [b for stage in folded.stages for b in stage]
    assert all(isinstance(b.se, FoldedSqueezeExcite) for b in blocks)
    assert folded.head.norm.shift is None and folded.head.norm.scale is None  # into the classifier
    assert all(b.spatial.norm.shift is None for b in blocks)  # into SE reduce, project and the gate
    assert all(b.expand.norm.shift is None for b in blocks if isinstance(b.expand, ConvNormAct))
    assert folded.stem.norm.shift is None
    assert all(isinstance(b.spatial.conv, CenteredConv2d) for b in blocks)  # - E into the k x k conv
    monkeypatch.setattr(ProxyNormAct2d, "proxy_affine", lambda self: pytest.fail("moments computed"))
    with torch.no_grad():
        out, out32 = folded(x), folded32(x.float())
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-10
    assert ((out32 - ref32).abs().max() / ref32.abs().max()).item() < 1e-5
    torch.testing.assert_close(folded(x), out)  # with gradients on, nothing is applied in place
    with torch.no_grad():  # nothing in the folded model depends on the input size
        assert ((folded(small) - ref_small).abs().max() / ref_small.abs().max()).item() < 1e-10


@pytest.mark.parametrize(("size", "kernel", "stride", "groups"), [
    ((9, 13), 3, 1, 2), ((14, 14), 5, 2, 4), ((15, 8), 5, 1, 8), ((20, 20), 3, 2, 1), ((2, 3), 5, 1, 2)])
@pytest.mark.parametrize("border", [True, False])
def test_centered_conv_is_the_conv_of_the_centred_input(size: tuple[int, int], kernel: int, stride: int,
                                                        groups: int, border: bool) -> None:
    # conv(x - E) with zero padding: bias plus border correction (or the subtraction), both exact
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, kernel, stride, kernel // 2, groups=groups, bias=False).double()
    mean = torch.randn(8, dtype=torch.float64)
    centered = CenteredConv2d(conv, mean)
    centered.MIN_POSITIONS_PER_BORDER = 0 if border else 10**9
    x = torch.randn(3, 8, *size, dtype=torch.float64)
    ref = conv(x - mean.view(-1, 1, 1))
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        torch.testing.assert_close(centered(xl), ref, rtol=1e-12, atol=1e-12)  # with gradients: x untouched
        assert torch.equal(xl, x)
        with torch.no_grad():
            torch.testing.assert_close(centered(xl.clone()), ref, rtol=1e-12, atol=1e-12)
    other = CenteredConv2d(torch.nn.Conv2d(8, 16, kernel, stride, kernel // 2, groups=groups, bias=False).double(),
                           torch.randn(8, dtype=torch.float64))
    centered.load_state_dict(other.state_dict())  # the cached border correction follows the new weights
    torch.testing.assert_close(centered(x), other(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="zero-padded conv without bias"):
        CenteredConv2d(torch.nn.Conv2d(8, 8, 3, padding=1), mean)


def test_model_made_under_inference_mode_runs_unfolded_and_folded() -> None:
    # inference tensors have no version counter: nothing may be cached on one, and every forward must work
    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        model = create_model("g16_efficientnet_b0", norm="lnpn", num_classes=10).eval()
        randomize(model)
        return model

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = make()(x)
    with torch.inference_mode():
        model = make()
        assert model.stem.norm.weight.is_inference()
        for net in (model, model, fold_proxy_norm(copy.deepcopy(model))):  # folded: float32 rounding
            assert ((net(x) - ref).abs().max() / ref.abs().max()).item() < 1e-5
        with torch.no_grad():
            model.stem.norm.proxy_bias.add_(1.0)  # an in-place edit no version counter records
        assert (model(x) - ref).abs().max() > 1e-3


def test_fold_other_layouts_and_errors() -> None:
    # a PN layer feeding something fold does not know keeps its affine as a constant: still exact
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), ProxyNormAct2d(8), torch.nn.Conv2d(8, 4, 3))
    randomize(net)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = net(x)
        out = fold_proxy_norm(net)(x)
    assert isinstance(net[1], FoldedNormAct2d) and net[1].scale is not None
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="eval mode"):
        fold_proxy_norm(create_model("g16_efficientnet_b0", norm="lnpn"))
    gn = create_model("g16_efficientnet_b0", norm="gn").eval()  # nothing to fold: unchanged
    before = {k: v.clone() for k, v in gn.state_dict().items()}
    fold_proxy_norm(gn)
    assert all(torch.equal(before[k], v) for k, v in gn.state_dict().items())


def test_appendix_c_pre_activations_stay_normalized_only_with_pn() -> None:
    simulate = runpy.run_path(str(ROOT / "scripts" / "appendix_c.py"))["simulate"]
    stats = {m: simulate(m, depth=20, width=128, samples=512, dtype=torch.float64) for m in ("lnpn", "ln", "none")}
    pn = stats["lnpn"]
    assert pn["mean_rms"].max() < 0.25
    assert pn["var_median"].min() > 0.8 and pn["var_median"].max() < 1.25
    assert stats["ln"]["mean_rms"][-1] > 0.5 and stats["ln"]["var_median"][-1] < 0.3  # channels collapse
    assert stats["none"]["var_median"][-1] < 1e-3  # variance vanishes


@pytest.mark.parametrize("norm", ["gn", "ln", "lnpn", "gnpn"])
def test_norms_under_autocast_keep_float32_statistics_and_half_activations(norm: str) -> None:
    """The path CUDA's autocast takes (group_norm in float32), on the CPU too: the statistics in float32, the
    activations handed on in the autocast dtype (bfloat16 here), close to a float32 forward."""
    from peffnet.layers.norm_act import norm_act
    from peffnet.layers.normalization import group_norm

    torch.manual_seed(0)
    layer = norm_act(norm, 16)
    x = 10 + torch.randn(4, 16, 8, 8)
    with torch.no_grad():
        reference = layer(x.clone())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = layer(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference, rtol=0.05, atol=0.05)
    y = x.bfloat16()
    torch.testing.assert_close(group_norm(y, 2, None, None, 1e-3), F.group_norm(y.float(), 2, eps=1e-3).bfloat16(),
                               rtol=0, atol=0)
