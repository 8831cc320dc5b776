"""The fused training form of proxy norm: the plain model's math with fewer passes (paper Section 3.2, Eq. 4).

:func:`fuse_proxy_norm` rewrites a plain LN+PN / GN+PN :class:`~peffnet.models.EfficientNet` (or its backbone,
:class:`~peffnet.models.EfficientNetFeatures`: every block output, so every feature map, is unchanged) in place. The
fused modules *adopt* the plain modules' children (the very same ``conv``, ``norm``, ``se``, ``project``
objects under the same names), so the fused model shares every Parameter with the plain one and has the
same ``state_dict`` keys: a checkpoint of either form loads into the other. What changes is where Eq. 4's
per-channel affine ``z = s (a - E)`` of ``a = swish(gamma y + beta)`` (``s = 1/sqrt(Var + eps~)``,
``t = -E s``) is applied; each rewrite is exact in real arithmetic (only float rounding differs):

==================  ======================================  ============================================
PN after            how ``z`` is formed                     why it is exact
==================  ======================================  ============================================
expansion 1x1 conv  ``a - E`` in place; ``s`` multiplies    ``conv(s (a - E)) = conv'(a - E)`` with
                    the spatial conv's weights per input    ``W'[o, c] = W[o, c] s[c]``; a zero-padded
                    channel (O(params), differentiable)     ``s (a - E)`` is ``s`` times the zero-padded
                                                            ``a - E``, so padding is no exception
spatial k x k conv  not formed: the squeeze-excite pools    the SE is the only consumer of ``z``, and a
                    ``mean(a) s + t`` and outputs           per-channel affine commutes with the spatial
                    ``a (s g) + t g`` for its gate ``g``    mean: ``mean(z) = mean(a) s + t``,
                                                            ``z g = a (s g) + t g``
stem, head          ``a * s + t`` in place                  the same affine; its backward recovers ``a``
                    (:class:`~peffnet.fusion.ops.Channel    from ``z`` (``s > 0``), so no extra tensor
                    Affine`)                                is stored
==================  ======================================  ============================================

The moments of all PN layers of a forward are computed in **one** batched call (:class:`ProxyAffineTable`):
they are per channel (Section 3.2: O(channels), independent of batch and resolution), so concatenating
the channels of all 33 layers of a B0 changes nothing but the number of (tiny) ops, whose per-op overhead
is what the moments cost. Gradients flow back through the concatenation to each layer's parameters.
"""

import torch
import torch.nn.functional as F
from torch import nn

from peffnet.fusion.ops import ChannelAffine, ChannelShift, channel_affine_, channel_view, scale_inputs
from peffnet.layers.blocks import ConvNormAct, MBConv, SqueezeExcite
from peffnet.layers.normalization import group_norm
from peffnet.layers.proxy_moments import proxy_affine
from peffnet.layers.proxy_norm import ProxyNormAct2d
from peffnet.models.efficientnet import EfficientNet
from peffnet.models.features import EfficientNetFeatures

__all__ = ["FusedConvNormAct", "FusedMBConv", "ProxyAffineTable", "fuse_proxy_norm"]


class ProxyAffineTable:
    """Eq. 4's ``(scale, shift)`` of every PN layer of one forward, computed in one batched call.

    Owned by :func:`fuse_proxy_norm` (not a Module: no ``state_dict`` entries). :meth:`refresh` runs once at
    the start of every forward (a forward pre-hook on the stem, the first layer every forward runs), so each
    forward gets its own autograd graph of the moments (micro-batching runs several forwards before one
    backward). Its entries stay until the next forward: non-reentrant gradient checkpointing recomputes a
    block in the backward pass, and the recomputed block must record the ops the original forward recorded,
    which it does by reading the same entries. Layers whose affine is a constant (eval mode without
    gradients: :meth:`ProxyNormAct2d.caches_affine`) get no entry and use their own eval cache, as does
    everything while compiling. A fused block is meant to run inside the model's forward: called on its
    own, it reads the entries of the model's last forward.
    """

    def __init__(self, layers: list[ProxyNormAct2d]) -> None:
        self.layers = layers
        self.entries: dict[ProxyNormAct2d, tuple[torch.Tensor, torch.Tensor]] = {}

    def refresh(self, *_: object) -> None:
        """Compute the affine of every layer that would compute its own in this forward (training, or
        gradients wanted), batched per (eps~, dtype, device). Takes and ignores a pre-hook's arguments."""
        self.entries = {}
        if torch.compiler.is_compiling():
            return
        groups: dict[tuple, list[ProxyNormAct2d]] = {}
        for m in self.layers:
            if not m.caches_affine():
                groups.setdefault((m.proxy_eps, m.weight.dtype, m.weight.device), []).append(m)
        for (eps, _, _), layers in groups.items():
            params = [torch.cat(p) for p in zip(*((m.weight, m.bias, m.proxy_weight, m.proxy_bias) for m in layers),
                                                strict=True)]
            sizes = [m.channels for m in layers]
            scale, shift = proxy_affine("swish", *params, eps)
            for m, s, t in zip(layers, scale.split(sizes), shift.split(sizes), strict=True):
                self.entries[m] = (s, t)

    def affine(self, layer: ProxyNormAct2d) -> tuple[torch.Tensor, torch.Tensor]:
        """``layer``'s ``(scale, shift)`` for this forward: its entry, else :meth:`ProxyNormAct2d.proxy_affine`."""
        entry = self.entries.get(layer)
        return entry if entry is not None else layer.proxy_affine()


def _normalized_swish(pn: ProxyNormAct2d, x: torch.Tensor) -> torch.Tensor:
    """``a = swish(gamma GN(x) + beta)``, Eq. 4's numerator before centring (swish in place: a fresh tensor)."""
    return F.silu(group_norm(x, pn.groups, pn.weight, pn.bias, pn.eps), inplace=True)


def _wants_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _gate_affine(se: SqueezeExcite, a: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``se(a * scale + shift)`` without forming ``z = a * scale + shift``: the SE pools ``mean(a) * scale +
    shift`` and outputs ``a * (scale * gate) + shift * gate``. ``a`` must be a fresh activation: without
    gradients it is gated in place."""
    scale, shift = channel_view(scale, a), channel_view(shift, a)
    gate = se.gate(torch.addcmul(shift, a.mean((2, 3), keepdim=True), scale))
    z = a * (scale * gate) if torch.is_grad_enabled() else a.mul_(scale * gate)
    return z.add_(shift * gate)  # faster on CPU than addcmul's double broadcast


class FusedConvNormAct(nn.Module):
    """A conv + PN layer (the stem, the head) whose Eq. 4 affine is one in-place pass (:class:`ChannelAffine`).

    Holds the plain layer's ``conv`` and ``norm`` themselves.
    """

    def __init__(self, layer: ConvNormAct, table: ProxyAffineTable) -> None:
        super().__init__()
        self.conv, self.norm = layer.conv, layer.norm
        self.table = table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = _normalized_swish(self.norm, self.conv(x))
        scale, shift = self.table.affine(self.norm)
        if _wants_grad(a, scale):
            return ChannelAffine.apply(a, scale, shift)
        return channel_affine_(a, scale, shift)


class FusedMBConv(nn.Module):
    """An :class:`~peffnet.layers.blocks.MBConv` whose two PN layers form no ``z`` of their own (module docstring).

    Holds the plain block's ``expand``, ``spatial``, ``se``, ``project`` and ``drop_path`` themselves.
    """

    def __init__(self, block: MBConv, table: ProxyAffineTable) -> None:
        super().__init__()
        self.expand, self.spatial, self.se = block.expand, block.spatial, block.se
        self.project, self.drop_path = block.project, block.drop_path
        self.has_residual = block.has_residual
        self.expands = isinstance(block.expand, ConvNormAct)  # False: stage 1 (E=1), expand is nn.Identity
        self.table = table

    def _spatial_conv_of_expansion(self, x: torch.Tensor) -> torch.Tensor:
        """``spatial.conv(z)`` of the expansion's ``z = s (a - E)``: ``a - E`` in place, ``s`` in the weights."""
        a = _normalized_swish(self.expand.norm, self.expand.conv(x))
        scale, shift = self.table.affine(self.expand.norm)
        minus_mean = shift / scale  # -E
        if a.dtype != minus_mean.dtype and _wants_grad(a, minus_mean):
            a = ChannelShift.apply(a, minus_mean)  # sums E's gradient in E's (wider) dtype
        else:
            a = channel_affine_(a, None, minus_mean)  # autograd's own in-place add: no Python backward node
        conv = self.spatial.conv
        weight = scale_inputs(conv.weight, scale, conv.groups)
        return F.conv2d(a, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._spatial_conv_of_expansion(x) if self.expands else self.spatial.conv(x)
        a = _normalized_swish(self.spatial.norm, h)
        h = _gate_affine(self.se, a, *self.table.affine(self.spatial.norm))
        h = self.project(h)
        return x + self.drop_path(h) if self.has_residual else h


def training_form(model: nn.Module, device: torch.device, compile: bool) -> str:
    """Which form of ``model`` trains fastest: ``fused`` in eager mode on a CPU for proxy-norm models;
    ``plain`` on CUDA and under ``torch.compile`` (the compiler fuses the plain model's per-channel work into
    its own kernels), and for models without proxy norm."""
    has_pn = any(isinstance(m, ProxyNormAct2d) for m in model.modules())
    return "fused" if has_pn and device.type == "cpu" and not compile else "plain"


def fuse_proxy_norm(model: nn.Module) -> nn.Module:
    """Rewrite a plain LN+PN / GN+PN EfficientNet (or backbone) into its fused training form, in place (module
    docstring).

    The fused model computes what the plain one computes (outputs and gradients equal up to float rounding,
    in training and eval, with gradient checkpointing and micro-batching: ``tests/test_proxy_norm_fused.py``),
    shares its Parameters and has the same ``state_dict`` keys. It is the fast form for eager CPU training;
    ``torch.compile`` fuses the plain model's per-channel ops by itself. Models without proxy norm, and models
    already fused, are returned unchanged.

    Returns:
        ``model`` (modified in place), for chaining.

    Raises:
        ValueError: ``model`` has proxy norm but is not a peffnet EfficientNet or EfficientNetFeatures.
    """
    layers = [m for m in model.modules() if isinstance(m, ProxyNormAct2d)]
    if not layers or any(isinstance(m, (FusedConvNormAct, FusedMBConv)) for m in model.modules()):
        return model
    if not isinstance(model, (EfficientNet, EfficientNetFeatures)):
        raise ValueError(f"fuse_proxy_norm rewrites peffnet EfficientNets and their backbones, not "
                         f"{type(model).__name__}")
    table = ProxyAffineTable(layers)
    model.stem = FusedConvNormAct(model.stem, table)
    for stage in model.stages:
        for i, block in enumerate(stage):
            stage[i] = FusedMBConv(block, table)
    if isinstance(getattr(model, "head", None), ConvNormAct):  # a backbone, or a pruned model, has none
        model.head = FusedConvNormAct(model.head, table)
    model.stem.register_forward_pre_hook(table.refresh)
    return model
