"""timm's model contract for every registered ``peffnet_*`` model, checked the way timm's own test suite
(``tests/test_models.py``) checks its models: pretrained/default cfgs, ``forward_features`` / ``forward_head``,
``reset_classifier``, ``num_classes=0`` and ``global_pool=''``, ``features_only`` with ``feature_info``,
``forward_intermediates``, forward and backward, FX tracing forward and backward, TorchScript; and every
keyword of ``timm.create_model`` honoured or refused.

What runs on which names (docs/models.md, "timm's contract"):

* every one of the 144 names: the registry and the ``pretrained_cfg``;
* :data:`BUILT` (each group preset at each size, the norm spellings in turn, 24 names): the model's attributes
  (meta device);
* :data:`SAMPLE` (B0 of each group preset with each norm, 15 names, plus B1-B7 once each, every preset and
  every norm among them): the forward, backward, head, features and intermediates checks (built
  for real from B5 on only in the slow tier; the fast tier checks B7's shapes on the meta device);
* :data:`HEAVY` (one B0 per norm, each group preset among them, the flagship G16 LN+PN one of them): FX forward
  and backward, TorchScript.
* :data:`FX_SCRIPT` (one B0 per norm, classifier and backbone): FX, then TorchScript.

The fast test tier (``-m "not slow"``) runs the registry and attribute checks, the forward checks on
:data:`FAST` (five B0s: every norm, every group preset and the flagship), B7's shapes on the meta device, FX
and TorchScript on :data:`FAST_HEAVY` and FX-then-TorchScript on its proxy-norm name; the rest is in the slow
tier.

Inputs are small (:func:`small_input`), as in timm's tests for large models; the pool size at the native
resolution is checked for two B0s.
"""

from __future__ import annotations

import io
import math

import pytest
import timm
import timm.optim
import torch
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules, get_pretrained_cfg
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import peffnet
from conftest import randomize
from peffnet.layers.proxy_norm import ProxyNormAct2d
from peffnet.models import DEFAULT_NORM, NORMS, list_models, preset

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ALL = timm.list_models("peffnet_*")
SAMPLE = [f"peffnet_{group}efficientnet_b0_{norm}" for group in ("", "g4_", "g16_") for norm in NORMS] + [
    "peffnet_g4_efficientnet_b1_gnpn", "peffnet_g16_efficientnet_b2_ln", "peffnet_efficientnet_b3_lnpn",
    "peffnet_g4_efficientnet_b4", "peffnet_g16_efficientnet_b5_gn", "peffnet_efficientnet_b6_bn",
    "peffnet_g16_efficientnet_b7_lnpn"]
SPELLINGS = ("", *(f"_{n}" for n in NORMS))
BUILT = [f"peffnet_{name}{SPELLINGS[i % len(SPELLINGS)]}" for i, name in enumerate(list_models())]
"""Each group preset at each size once (24 names), the norm spellings in turn: every spelling with every preset."""
LARGE = [n for n in SAMPLE if preset(n.removeprefix("peffnet_")).size in ("b5", "b6", "b7")]
"""The B5-B7 names of :data:`SAMPLE` (tens of millions of parameters each)."""
FAST = ["peffnet_efficientnet_b0_bn", "peffnet_g4_efficientnet_b0_gn", "peffnet_g16_efficientnet_b0_ln",
        "peffnet_g4_efficientnet_b0_gnpn", "peffnet_g16_efficientnet_b0_lnpn"]
"""The names of the fast tier: each norm, each group preset, and the flagship G16 LN+PN (a bare name builds the
BN model: test_model_attributes checks that on the meta device)."""
HEAVY = FAST
"""The FX and TorchScript names: one B0 per norm (tracing and scripting see the norm layers; the group size is a
convolution's argument), each group preset among them."""
FAST_HEAVY = ["peffnet_efficientnet_b0_bn", "peffnet_g16_efficientnet_b0_lnpn"]
"""The fast tier's FX and TorchScript names: BN, and the flagship's proxy norm (whose moments are one leaf call)."""


def tiered(params: list, fast: list) -> list:
    """``params`` for ``parametrize``, those not in ``fast`` (or whose name, the first value, is not) marked
    slow."""
    def name(p: object) -> object:
        return p[0] if isinstance(p, tuple) else p
    return [p if p in fast or name(p) in fast else pytest.param(*(p if isinstance(p, tuple) else (p,)),
                                                                marks=pytest.mark.slow) for p in params]


REAL = tiered(SAMPLE, FAST)
"""SAMPLE, all but :data:`FAST` marked slow (the real B5-B7 builds among them:
:func:`test_large_models_on_the_meta_device` is their fast check)."""
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bilinear",
            "crop_pct": 0.875, "crop_mode": "center"}


def small_input(model: torch.nn.Module, batch: int = 1) -> torch.Tensor:
    """A small test input, as timm's tests use for large models: 64 px (a 2 x 2 map at stride 32), the model's
    ``min_input_size`` (32 px) from B5 on."""
    cfg = model.pretrained_cfg
    side = 64 if cfg["input_size"][-1] < 456 else cfg["min_input_size"][-1]
    return torch.randn(batch, cfg["input_size"][0], side, side)


def test_every_preset_is_registered_with_every_norm() -> None:
    assert set(ALL) == {f"peffnet_{n}" for n in list_models(with_norms=True)}
    assert len(ALL) == 24 * (1 + len(NORMS)) == 144
    assert {"peffnet_g16_efficientnet_b0_lnpn", "peffnet_efficientnet_b7_gn", "peffnet_g4_efficientnet_b3"} <= set(ALL)
    assert "efficientnet_b0" in timm.list_models("efficientnet_b0")  # timm's own names are untouched
    assert timm.list_models("peffnet_*", pretrained=True) == []  # no weights are shipped
    assert all(get_pretrained_cfg(n).has_weights is None or not get_pretrained_cfg(n).has_weights for n in ALL)
    assert set(SAMPLE) <= set(ALL) and set(HEAVY) <= set(SAMPLE) and set(FAST_HEAVY) <= set(FAST) <= set(SAMPLE)
    sampled = [preset(n.removeprefix("peffnet_")) for n in SAMPLE]
    assert {c.norm for c in sampled} == set(NORMS) and {c.size for c in sampled} == {f"b{i}" for i in range(8)}
    built = [preset(n.removeprefix("peffnet_")) for n in BUILT]
    assert len({(c.group_size, c.size) for c in built}) == len(BUILT) == 24
    spelled = {(c.group_size, f"_{c.norm}" if n.endswith(f"_{c.norm}") else "") for n, c in
               zip(BUILT, built, strict=True)}
    assert spelled == {(g, sp) for g in (1, 4, 16) for sp in SPELLINGS}  # every spelling with every preset
    heavy = [preset(n.removeprefix("peffnet_")) for n in HEAVY]
    assert {c.norm for c in heavy} == set(NORMS) and {c.group_size for c in heavy} == {1, 4, 16}


@pytest.mark.parametrize("name", ALL)
def test_pretrained_cfg(name: str) -> None:
    """timm's test_model_default_cfgs, its registry half: every name's pretrained_cfg and data config."""
    cfg = preset(name.removeprefix("peffnet_"))
    suffix = name.rpartition("_")[2]
    assert cfg.norm == (suffix if suffix in NORMS else DEFAULT_NORM)
    registered = get_pretrained_cfg(name).to_dict()
    side = math.ceil(cfg.resolution / 32)
    assert registered["input_size"] == (3, cfg.resolution, cfg.resolution)
    assert registered["min_input_size"] == (3, 32, 32)
    assert registered["pool_size"] == (side, side) and registered["num_classes"] == 1000
    assert {k: registered[k] for k in IMAGENET} == IMAGENET and "url" not in registered


@pytest.mark.parametrize("name", BUILT)
def test_model_attributes(name: str) -> None:
    """timm's test_model_default_cfgs, without the forward (that is :func:`test_default_cfgs_forward`): the
    attributes of the model the registry builds, on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(name)
    registered = get_pretrained_cfg(name).to_dict()
    assert isinstance(model, peffnet.EfficientNet) and model.cfg == preset(name.removeprefix("peffnet_"))
    assert model.pretrained_cfg == model.default_cfg == registered
    data = timm.data.resolve_data_config({}, model=model)
    assert data == {"input_size": registered["input_size"], **IMAGENET}
    assert model.num_classes == 1000 and model.num_features > 0 and model.head_hidden_size == model.num_features
    keys = model.state_dict().keys()
    assert registered["classifier"] + ".weight" in keys and registered["first_conv"] + ".weight" in keys
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    assert info.reduction() == [2, 4, 8, 16, 32]
    for channels, module in zip(info.channels(), info.module_name(), strict=True):
        assert model.get_submodule(module)[-1].project.conv.out_channels == channels


@pytest.mark.parametrize("name", REAL)
def test_default_cfgs_forward(name: str) -> None:
    """timm's test_model_default_cfgs: unpooled features of the pool size, pre-logits of ``head_hidden_size``,
    ``reset_classifier(0)`` and ``(0, '')``, and ``num_classes=0, global_pool=''`` at creation."""
    model = timm.create_model(name).eval()
    x = small_input(model)
    pool = math.ceil(x.shape[-1] / 32)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape == (1, model.num_features, pool, pool)
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model.cfg.num_classes == 0
        out = model(x)
        assert out.shape == pre_logits.shape
        torch.testing.assert_close(out, pre_logits)
        model.reset_classifier(0, "")
        assert model(x).shape == (1, model.num_features, pool, pool)
        headless = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert headless(x).shape == (1, model.num_features, pool, pool)
        assert "classifier.weight" not in headless.state_dict()


@pytest.mark.parametrize("name", ["peffnet_efficientnet_b0", "peffnet_g16_efficientnet_b0_lnpn"])
def test_pool_size_at_the_native_resolution(name: str) -> None:
    model = timm.create_model(name).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, *model.pretrained_cfg["input_size"]))
    assert features.shape[-2:] == model.pretrained_cfg["pool_size"] == (7, 7)


@pytest.mark.parametrize("name", REAL)
def test_forward_and_backward(name: str) -> None:
    """timm's test_model_forward (gradient checkpointing leaves the output alone) and test_model_backward
    (``num_classes=42``, every parameter gets a gradient)."""
    model = timm.create_model(name).eval()
    x = small_input(model)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 1000) and not out.isnan().any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)
    model = timm.create_model(name, num_classes=42).train()
    out = model(small_input(model, batch=2))
    out.mean().backward()
    assert out.shape == (2, 42) and not out.isnan().any()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", REAL)
def test_features_only_and_forward_intermediates(name: str) -> None:
    """timm's test_model_forward_features, test_model_forward_intermediates_features (the ``getter`` wrapper) and
    test_model_forward_intermediates: the maps ``feature_info`` describes, the same maps every way, the final
    features of ``forward_intermediates`` equal ``forward_features``, also with gradient checkpointing."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = small_input(model)
    backbone = timm.create_model(name, features_only=True).eval()
    getter = timm.create_model(name, features_only=True, feature_cls="getter").eval()
    backbone.load_state_dict(model.state_dict(), strict=False)  # the classifier's weights, head left out
    getter.model.load_state_dict(model.state_dict(), strict=False)
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    assert backbone.feature_info.get_dicts() == getter.feature_info.get_dicts() == info.get_dicts()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        maps = backbone(x)
        torch.testing.assert_close(final, model.forward_features(x))
        for got in (maps, getter(x), model.forward_intermediates(x, intermediates_only=True)):
            assert len(got) == len(intermediates) == 5
            for a, b in zip(got, intermediates, strict=True):
                torch.testing.assert_close(a, b)
        for channels, reduction, fmap in zip(info.channels(), info.reduction(), maps, strict=True):
            assert fmap.shape[:2] == (1, channels) and not fmap.isnan().any()
            assert fmap.shape[-1] == math.ceil(x.shape[-1] / reduction)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", tiered(LARGE, LARGE[-1:]))  # the fast tier: B7
def test_large_models_on_the_meta_device(name: str) -> None:
    """The shapes of :func:`test_default_cfgs_forward` for B5-B7 with no weights made (a meta forward costs
    several times a real one at this size: one is run): features of the pool size, pre-logits, logits; the
    ``features_only`` model describes the classifier's maps."""
    with torch.device("meta"):
        model = timm.create_model(name).eval()
        backbone = timm.create_model(name, features_only=True).eval()
    x = small_input(model, batch=2).to("meta")
    pool = math.ceil(x.shape[-1] / 32)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, pool, pool)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model.forward_head(features).shape == (2, 1000)
    assert backbone.feature_info.get_dicts() == FeatureInfo(model.feature_info, len(model.feature_info)).get_dicts()


def fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """A torchvision feature extractor returning the model's output, traced with timm's leaf modules and
    autowrapped functions (what timm's FX tests and its ``fx`` feature wrapper use)."""
    kwargs = {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=kwargs).train(train)


@pytest.mark.parametrize("name", tiered(HEAVY, FAST_HEAVY))
def test_fx_forward_is_exact(name: str) -> None:
    """timm's test_model_forward_fx: the traced graph gives exactly the model's output (proxy norm: the
    moments are one leaf call, computed on every call of the graph, while the model serves them from its
    eval cache)."""
    model = randomize(timm.create_model(name)).eval()
    x = small_input(model)
    with torch.inference_mode():
        out = model(x)  # fills the proxy-norm eval caches before tracing
        graph = fx_model(model)
        fx_out = torch.cat(list(graph(x).values()))
    assert torch.equal(fx_out, out) and not out.isnan().any()
    calls = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert calls.count(peffnet.layers.swish_proxy_affine) == sum(isinstance(m, ProxyNormAct2d) for m in model.modules())


@pytest.mark.parametrize("name", tiered(HEAVY, FAST_HEAVY))
def test_fx_backward(name: str) -> None:
    """timm's test_model_backward_fx: the traced training graph has every parameter's gradient; for proxy norm
    they equal the eager model's (the moments' own backward runs inside the leaf call)."""
    torch.manual_seed(0)
    model = randomize(timm.create_model(name, num_classes=42, drop_path_rate=0.0, drop_rate=0.0)).train()
    graph = fx_model(model, train=True)
    x = small_input(model, batch=2)
    out = torch.cat(list(graph(x).values()))
    out.mean().backward()
    assert out.shape == (2, 42) and not out.isnan().any()
    assert [n for n, p in graph.named_parameters() if p.grad is None] == []
    assert sum(p.numel() for p in graph.parameters()) == sum(p.numel() for p in model.parameters())
    if model.cfg.norm.endswith("pn"):
        grads = {n: p.grad.clone() for n, p in graph.named_parameters()}
        model.zero_grad()
        model(x).mean().backward()
        for n, g in grads.items():
            torch.testing.assert_close(g, model.get_parameter(n).grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", tiered(HEAVY, FAST_HEAVY))
def test_torchscript(name: str) -> None:
    """timm's test_model_forward_torchscript on the plain model; a scripted model also saves and loads
    (proxy norm's moments are plain ops there, not a Python autograd Function)."""
    with timm.set_scriptable(True):
        model = randomize(timm.create_model(name)).eval()
    scripted = torch.jit.script(model)
    x = small_input(model)
    with torch.no_grad():
        out, ref = scripted(x), model(x)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)(x)
    assert out.shape == (1, 1000) and not out.isnan().any()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded, ref, rtol=1e-5, atol=1e-5)


FX_SCRIPT = [(name, trace) for name in ("peffnet_efficientnet_b0_bn", "peffnet_g4_efficientnet_b0_gn",
                                         "peffnet_g16_efficientnet_b0_ln", "peffnet_g16_efficientnet_b0_lnpn",
                                         "peffnet_g4_efficientnet_b0_gnpn") for trace in ("classifier", "features")]
FX_SCRIPT.append(("peffnet_g16_efficientnet_b0_lnpn", "timm"))
"""One B0 per norm (each group preset among them), its classifier and its backbone traced by
``torch.fx.symbolic_trace``, and the flagship's classifier traced the timm way."""


@pytest.mark.parametrize(("name", "trace"), tiered(FX_SCRIPT, [p for p in FX_SCRIPT if p[0] == FAST_HEAVY[-1]]))
def test_fx_graph_scripts(name: str, trace: str) -> None:
    """timm's test_model_forward_fx_torchscript: a traced model compiles with TorchScript (the code FX generates
    carries the forward's annotations, which must be types, not strings) and runs like the model (proxy norm:
    its leaf call computes the moments with plain ops under TorchScript). ``timm`` traces with timm's leaf
    modules and functions into a feature extractor, as timm's test does."""
    with timm.set_scriptable(True):
        model = randomize(timm.create_model(name, features_only=trace == "features")).eval()
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.script(fx_model(model) if trace == "timm" else torch.fx.symbolic_trace(model))
    with torch.no_grad(), torch.jit.optimized_execution(False):  # one run: no profiling passes
        ref, out = model(x), scripted(x)
    ref, out = (ref, out) if trace == "features" else ([ref], list(out.values()) if trace == "timm" else [out])
    assert len(out) == len(ref) and not any(t.isnan().any() for t in ref)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kwargs", "check"), [
    ({"num_classes": 0}, lambda m: m.num_classes == 0 and isinstance(m.classifier, torch.nn.Identity)),
    ({"num_classes": 7, "global_pool": "catavgmax"},
     lambda m: m.head_hidden_size == 2 * m.num_features and m.classifier.in_features == 2 * m.num_features),
    ({"global_pool": "max"}, lambda m: m.cfg.global_pool == "max" and m.pool.pool_type == "max"),
    ({"in_chans": 1}, lambda m: m.stem.conv.in_channels == 1),
    ({"drop_rate": 0.3, "drop_path_rate": 0.0}, lambda m: m.dropout.p == 0.3 and m.cfg.drop_path_rate == 0.0),
    ({"group_size": 8, "expansion": 3, "resolution": 256}, lambda m: (m.cfg.group_size, m.cfg.expansion,
                                                                      m.cfg.resolution) == (8, 3, 256)),
    ({"norm": "lnpn"}, lambda m: m.cfg.norm == "lnpn"),  # the bare name takes a norm
    ({"dtype": torch.float64, "device": "cpu"}, lambda m: m.stem.conv.weight.dtype == torch.float64
     and m.stem.conv.weight.device.type == "cpu"),
    ({"pretrained_cfg_overlay": {"input_size": (3, 256, 256)}},
     lambda m: timm.data.resolve_data_config({}, model=m)["input_size"] == (3, 256, 256)),
    ({"features_only": True, "out_indices": (1, 3)}, lambda m: m.feature_info.reduction() == [4, 16]),
    ({"features_only": True, "out_indices": 2, "feature_cls": "fx"}, lambda m: m.feature_info.reduction() == [16, 32]),
    ({"features_only": True, "feature_cfg": {"feature_cls": "getter", "out_indices": (-1,)}},
     lambda m: m.feature_info.reduction() == [32]),
    ({"features_only": True, "num_classes": 0, "global_pool": ""}, lambda m: len(m.feature_info) == 5),
    ({"output_stride": 32, "cache_dir": None}, lambda m: True),
])
def test_keywords_are_honoured(kwargs: dict, check) -> None:
    with torch.device("cpu" if "device" in kwargs else "meta"):  # shapes only, unless the device is the point
        model = timm.create_model("peffnet_g16_efficientnet_b0", **kwargs)
    assert check(model)


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("peffnet_efficientnet_b0", {"pretrained": True}, "no pretrained weights are shipped for peffnet_efficientnet_b0"),
    ("peffnet_g16_efficientnet_b0_lnpn", {"norm": "gn"}, "g16_efficientnet_b0_lnpn is the lnpn model; norm='gn' "
                                                         "contradicts it (use g16_efficientnet_b0_gn)"),
    ("peffnet_efficientnet_b0", {"drop_block_rate": 0.1}, "unknown model override(s) drop_block_rate"),
    ("peffnet_efficientnet_b0", {"output_stride": 16}, "output_stride=16: peffnet models have output stride 32 only"),
    ("peffnet_efficientnet_b0", {"global_pool": ""}, "global_pool='' (no pooling) needs num_classes=0"),
    ("peffnet_efficientnet_b0", {"global_pool": "mean"}, "unknown global_pool 'mean'"),
    ("peffnet_efficientnet_b0", {"num_classes": -1}, "num_classes must be an integer >= 0, got -1"),
    ("peffnet_efficientnet_b0", {"out_indices": (1, 2)}, "select feature maps: pass features_only=True too"),
    ("peffnet_efficientnet_b0", {"feature_cls": "getter"}, "select feature maps: pass features_only=True too"),
    ("peffnet_efficientnet_b0", {"features_only": True, "feature_cls": "hook"},
     "feature_cls 'hook' is not supported for peffnet models"),
    ("peffnet_efficientnet_b0", {"features_only": True, "num_classes": 10},
     "features_only builds no classifier: drop num_classes=10"),
    ("peffnet_efficientnet_b0", {"features_only": True, "out_indices": (0, 5)},
     "feature index 5 is out of range: this model has 5 feature levels, 0 to 4 (strides 2 to 32)"),
    ("peffnet_efficientnet_b0", {"features_only": True, "out_indices": 6, "feature_cls": "getter"},
     "the last 6 feature levels: there are 5"),
])
def test_keywords_are_refused_in_one_line(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info, torch.device("meta"):
        timm.create_model(name, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_timm_tooling_takes_the_models() -> None:
    """What timm's scripts use beyond ``create_model``: the data pipeline from the model's config and the
    layer-wise learning-rate decay groups (``group_matcher``)."""
    model = timm.create_model("peffnet_g16_efficientnet_b0_lnpn", num_classes=10)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    assert "Resize(size=256, interpolation=bilinear" in str(transform)
    assert "CenterCrop(size=(224, 224))" in str(transform)
    groups = timm.optim.param_groups_layer_decay(model, weight_decay=1e-5, layer_decay=0.8)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    scales = {g["lr_scale"] for g in groups}
    assert len(scales) > 10 and max(scales) == 1.0  # stem, each block, head: one depth each
