"""Static cost of a model: parameters, MACs, activation memory and arithmetic intensity.

MACs are the multiply-accumulates of one forward pass of convolutions and linear layers (what the
paper's Table 2 calls FLOPs). Arithmetic intensity follows Appendix A, Eq. 5-7:

    I = FLOPs / (weight memory + activation memory) = G k^2 B f^2 / (s (G k^2 + B f^2))

with group size G (input channels per group), kernel k, batch B, input field size f and stride s.
Counting runs on the ``meta`` device, so even B7 at 600 px is profiled in well under a second.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from peffnet.layers.blocks import SqueezeExcite
from peffnet.layers.norm_act import BatchNormAct2d, norm_act
from peffnet.models.config import NORMS, ModelConfig, preset
from peffnet.models.efficientnet import build as build_model


@dataclass(frozen=True)
class LayerStat:
    """One convolution or linear layer of a profiled model."""

    name: str
    part: str  # "stem", "stage1".."stage7" or "head"
    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    group_size: int
    field: int  # input height (square inputs)
    macs: int
    params: int
    intensity: float  # Appendix A, Eq. 7


@dataclass
class PartStat:
    """Totals of one part of the network (stem, a stage, the head)."""

    params: int = 0
    macs: int = 0
    activations: int = 0  # elements stored per image


@dataclass
class ModelProfile:
    """Everything ``peffnet profile`` reports."""

    resolution: int
    batch_size: int
    params: int
    macs: int
    activation_bytes: int  # per image, float32
    intensity: float  # whole model: sum of Eq. 6 numerators over sum of denominators
    parts: dict[str, PartStat] = field(default_factory=dict)
    layers: list[LayerStat] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def arithmetic_intensity(group_size: int, kernel: int, field_size: int, stride: int, batch: int) -> float:
    """Appendix A, Eq. 7: FLOPs per element of weights and activations moved by a grouped conv."""
    g, k2, bf2 = group_size, kernel * kernel, batch * field_size * field_size
    return g * k2 * bf2 / (stride * (g * k2 + bf2))


def _part_of(name: str) -> str:
    if name.startswith("stages."):
        return f"stage{int(name.split('.')[1]) + 1}"
    return "stem" if name.startswith("stem") else "head"


def layer_stat(name: str, part: str, mod: nn.Module, x: torch.Tensor, out: torch.Tensor,
               batch_size: int) -> LayerStat:
    """A conv or linear layer's cost from one forward: MACs = output elements x input channels per group x k^2,
    and the Eq. 7 intensity at ``batch_size``."""
    params = sum(p.numel() for p in mod.parameters(recurse=False))
    if isinstance(mod, nn.Conv2d):
        k, s, gs, f = mod.kernel_size[0], mod.stride[0], mod.in_channels // mod.groups, x.shape[-1]
        macs = out[0].numel() * gs * mod.kernel_size[0] * mod.kernel_size[1]
        return LayerStat(name, part, "conv", mod.in_channels, mod.out_channels, k, s, gs, f, macs, params,
                         arithmetic_intensity(gs, k, f, s, batch_size))
    return LayerStat(name, part, "linear", mod.in_features, mod.out_features, 1, 1, mod.in_features, 1,
                     out[0].numel() * mod.in_features, params,
                     arithmetic_intensity(mod.in_features, 1, 1, 1, batch_size))


def trace_layers(model: nn.Module, x: torch.Tensor, batch_size: int, part_of: Callable[[str], str],
                 watch: Callable[[str, nn.Module], bool] | None = None) -> tuple[list[LayerStat], dict[str, int]]:
    """One eval-mode, gradient-free forward of ``model`` on ``x`` with hooks: the :func:`layer_stat` of every
    conv and linear layer, and the output size (elements per image) of every module ``watch`` selects."""
    layers: list[LayerStat] = []
    outputs: dict[str, int] = {}

    def on_layer(name: str) -> Callable[..., None]:
        return lambda mod, inputs, out: layers.append(layer_stat(name, part_of(name), mod, inputs[0], out,
                                                                 batch_size))

    def on_output(name: str) -> Callable[..., None]:
        return lambda mod, inputs, out: outputs.__setitem__(name, out[0].numel())

    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            handles.append(mod.register_forward_hook(on_layer(name)))
        if watch is not None and watch(name, mod):
            handles.append(mod.register_forward_hook(on_output(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return layers, outputs


def profile_model(model: nn.Module, resolution: int, batch_size: int = 1, in_chans: int = 3) -> ModelProfile:
    """Profile ``model`` for a square input of side ``resolution``.

    The model is moved to the ``meta`` device on a copy-free path when it already lives there;
    otherwise shapes are traced on a meta copy so real weights are not touched.
    """
    meta = model if next(model.parameters()).is_meta else _meta_copy(model)

    def stored(name: str, mod: nn.Module) -> bool:
        """The modules whose outputs are the activations an image keeps (a flatten is a view of the pooled
        features, with no memory of its own; a squeeze-excite's insides are 1x1 and counted with it)."""
        return bool(name and (not list(mod.children()) or isinstance(mod, SqueezeExcite))
                    and not _inside_se(meta, name) and not isinstance(mod, nn.Flatten))

    x = torch.empty(1, in_chans, resolution, resolution, device="meta")
    layers, activations = trace_layers(meta, x, batch_size, _part_of, stored)
    parts: dict[str, PartStat] = {}
    numer = denom = 0.0
    for layer in layers:
        part = parts.setdefault(layer.part, PartStat())
        part.params += layer.params
        part.macs += layer.macs
        if layer.kind == "conv":  # Eq. 6 summed over the layers: G^2 k^2 B f^2 groups / s over the elements moved
            g, k2, bf2, groups = layer.group_size, layer.kernel**2, batch_size * layer.field**2, \
                layer.in_channels // layer.group_size
            numer += g * g * k2 * bf2 * groups / layer.stride
            denom += k2 * g * g * groups + bf2 * g * groups
    for name, n in activations.items():
        parts.setdefault(_part_of(name), PartStat()).activations += n
    # Parameters that sit outside conv/linear layers (norm affine, PN) count towards their part.
    for name, p in meta.named_parameters():
        owner = name.rsplit(".", 1)[0]
        mod = meta.get_submodule(owner)
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            parts.setdefault(_part_of(name), PartStat()).params += p.numel()
    order = ["stem", *[f"stage{i}" for i in range(1, 8)], "head"]
    parts = {k: parts[k] for k in order if k in parts}
    return ModelProfile(
        resolution=resolution,
        batch_size=batch_size,
        params=sum(p.numel() for p in meta.parameters()),
        macs=sum(layer.macs for layer in layers),
        activation_bytes=4 * sum(activations.values()),
        intensity=numer / denom if denom else 0.0,
        parts=parts,
        layers=layers,
    )


def _inside_se(model: nn.Module, name: str) -> bool:
    """True for submodules of a squeeze-excite (their outputs are 1x1 and counted with the SE)."""
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), SqueezeExcite) for i in range(1, len(parts)))


def _meta_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` on the meta device (rebuilt from its config when it has one)."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        from peffnet.models import build

        with torch.device("meta"):
            return build(cfg)
    return copy.deepcopy(model).to("meta")


def conv_layers(model: nn.Module, resolution: int, batch_size: int = 1, in_chans: int = 3) -> list[LayerStat]:
    """Conv and linear layers of *any* model with their MACs per image and Eq. 7 intensity (:func:`layer_stat`,
    the count of :func:`profile_model`), traced on a meta-device copy."""
    try:
        meta = copy.deepcopy(model).to("meta")
        x = torch.empty(1, in_chans, resolution, resolution, device="meta")
    except (RuntimeError, NotImplementedError):  # pragma: no cover - models that refuse the meta device
        meta, x = copy.deepcopy(model).cpu(), torch.zeros(1, in_chans, resolution, resolution)
    return trace_layers(meta, x, batch_size, lambda name: "")[0]


def model_macs(model: nn.Module, resolution: int) -> int:
    """Forward MACs for one image: :func:`config_macs` of a peffnet model's configuration (the count of
    :func:`profile_model`), :func:`conv_layers` for any other model."""
    from peffnet.models.efficientnet import EfficientNet

    if isinstance(model, EfficientNet):
        return config_macs(model.cfg, resolution)
    return sum(layer.macs for layer in conv_layers(model, resolution))


@functools.lru_cache(maxsize=64)
def config_macs(cfg: ModelConfig, resolution: int) -> int:
    """Forward MACs for one image of the model ``cfg`` builds, at ``resolution`` (:func:`profile_model` on a
    meta-device build, remembered per configuration: every run's summary asks). The MACs are those of the conv
    and linear layers, which do not depend on the norm: the build uses BN, whose meta forward is the cheapest
    (proxy norm's moments, Eq. 4, are hundreds of small ops there)."""
    if cfg.norm != "bn":
        return config_macs(replace(cfg, norm="bn"), resolution)
    with torch.device("meta"):
        return profile_model(build_model(cfg), resolution, in_chans=cfg.in_chans).macs


def preset_costs(name: str) -> tuple[int, dict[str, int]]:
    """Forward MACs of a preset (one image, native resolution) and its parameter count with each norm, from one
    meta-device model. The MACs do not depend on the norm; the parameters differ only in the norm layers, counted
    for each norm by building those layers alone (:func:`~peffnet.layers.norm_act.norm_act`)."""
    cfg = preset(name, norm="bn")
    with torch.device("meta"):
        model = build_model(cfg)
        norms = [(m.num_features, m.act) for m in model.modules() if isinstance(m, BatchNormAct2d)]
        layer_params = {key: {norm: sum(p.numel() for p in norm_act(norm, *key).parameters()) for norm in NORMS}
                        for key in set(norms)}
    rest = sum(p.numel() for p in model.parameters()) - sum(layer_params[key]["bn"] for key in norms)
    params = {norm: rest + sum(layer_params[key][norm] for key in norms) for norm in NORMS}
    return profile_model(model, cfg.resolution).macs, params
