"""Fold proxy normalization into the network for inference (paper Section 3.2, Eq. 4).

In eval mode Eq. 4 is a constant per-channel affine ``z = a * s + t`` of ``a = swish(gamma y + beta)``, with
``s = 1 / sqrt(Var + eps~) > 0`` and ``t = -E s``, i.e. ``z = s (a - E)``. :func:`fold_proxy_norm` moves
it into the linear layer that consumes ``z`` wherever that is exact:

* The **scale** folds into the next convolution's weights (per input channel) always, zero padding
  included: a padded zero stays zero after scaling.
* The **shift** folds into a bias alone only where every output sees every input position exactly once
  with no padding: a 1x1 convolution or, after global pooling, a linear layer. Through a k x k convolution
  with zero padding, border outputs would see ``t`` where the unfolded model sees 0: there the shift
  becomes a bias plus an exact correction of those border outputs (:class:`CenteredConv2d`).

What each PN layer of an :class:`~peffnet.models.EfficientNet` becomes:

=====================  =========================================  ==========================================
PN after               consumer of ``z``                          folded
=====================  =========================================  ==========================================
head 1x1 conv          pool -> dropout -> classifier (linear)     scale and shift into the classifier
spatial k x k conv     squeeze-excite, gate, project 1x1          scale into SE reduce and project, shift
                                                                  into SE reduce's bias; the gate multiplies
                                                                  ``a - E``: an in-place subtraction before
                                                                  the in-place gating multiply
expansion 1x1 conv     spatial k x k conv (zero padded)           scale into the spatial conv's weights,
stem 3x3 conv          first block's spatial k x k conv           ``- E`` into its bias + border correction
                       (or its 1x1 expansion, if it has one)      (:class:`CenteredConv2d`); scale and shift
                                                                  into a 1x1 expansion
=====================  =========================================  ==========================================

Any other PN layer keeps its cached affine as a constant (:class:`FoldedNormAct2d` with ``scale`` and
``shift``), so a folded model never computes moments. Folding is exact up to float rounding
(``tests/test_proxy_norm.py`` checks 1e-5 relative on the logits); the folded model is for inference and
export only.
"""

import torch
import torch.nn.functional as F
from torch import nn

from peffnet.fusion.fuse import FusedConvNormAct, FusedMBConv
from peffnet.fusion.ops import channel_affine_, scale_inputs
from peffnet.layers.blocks import ConvNormAct, MBConv, SqueezeExcite
from peffnet.layers.normalization import group_norm
from peffnet.layers.proxy_norm import ProxyNormAct2d


class FoldedNormAct2d(nn.Module):
    """Inference form of a proxy-normalized swish: ``group_norm`` (own gamma/beta) and swish, then Eq. 4's
    constant ``affine`` ``x * scale + shift`` where it could not be folded into the next layer (else nothing)."""

    def __init__(self, pn: ProxyNormAct2d, affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.groups, self.eps = pn.groups, pn.eps
        self.weight = nn.Parameter(pn.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(pn.bias.detach().clone(), requires_grad=False)
        scale, shift = affine if affine is not None else (None, None)
        self.register_buffer("scale", None if scale is None else scale.to(pn.weight.dtype))
        self.register_buffer("shift", None if shift is None else shift.to(pn.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(group_norm(x, self.groups, self.weight, self.bias, self.eps), inplace=True)
        return x if self.shift is None else channel_affine_(x, self.scale, self.shift)


class FoldedSqueezeExcite(nn.Module):
    """Squeeze-excite of an input ``z = s (a - E)`` folded to take ``a``: the reduce conv absorbs ``s`` and
    ``t = -E s``, and the output ``(a - E) * gate`` (the following projection absorbs ``s``)."""

    def __init__(self, se: SqueezeExcite, mean: torch.Tensor) -> None:
        super().__init__()
        self.reduce, self.expand = se.reduce, se.expand
        self.register_buffer("mean", mean.to(se.reduce.weight.dtype).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.expand(F.silu(self.reduce(x.mean((2, 3), keepdim=True)))))
        if torch.is_grad_enabled():  # the product's backward needs x - E
            return (x - self.mean) * gate
        return x.sub_(self.mean).mul_(gate)  # x is the spatial norm's fresh output: two in-place passes


def _border(size: int, kernel: int, stride: int, padding: int, dilation: int) -> tuple[int, int, int]:
    """``(outputs, low, high)`` along one dim: how many outputs there are, how many at the start have a receptive
    field that reaches into the zero padding, and how many of the others at the end do."""
    extent = dilation * (kernel - 1)
    out = (size + 2 * padding - extent - 1) // stride + 1
    low = sum(1 for i in range(out) if i * stride - padding < 0)
    high = sum(1 for i in range(low, out) if i * stride - padding + extent > size - 1)
    return out, low, high


class CenteredConv2d(nn.Conv2d):
    """``conv(x - mean)`` with the original zero padding, for the ``a - E`` that Eq. 4 leaves before a k x k conv.

    Subtracting ``E`` from ``x`` is a pass over the input. Instead, by linearity,
    ``conv_pad0(x - E) = conv_pad0(x) - conv_pad0(E 1) = conv_pad0(x) - c + D``: ``c[o]``, the sum of
    ``W[o] E`` over all taps, is the conv's *bias* (free inside the conv kernel), and ``D = c - conv_pad0(E 1)``
    is zero except at outputs whose receptive field reaches into the padding (the taps that see a padded zero
    where ``x - E`` would have had ``-E``). ``D`` depends on the input size only; its border strips are cached
    per size (dropped by ``load_state_dict``) and added in place. Exact up to float rounding.

    The strips are cheap rows but, in NCHW, costly columns (one cache line per position), so the correction
    wins only where the input is large next to the output's border: at least :attr:`MIN_POSITIONS_PER_BORDER`
    input positions per border output position (stride-2 convs and the 112 px maps of a 224 px B0; measured
    per layer with ``benchmarks/bench_norms.py``'s shapes, docs/proxy_norm.md). Elsewhere, and while compiling
    or tracing for export (a compiler fuses the subtraction into the producer's kernel), ``x - E`` is
    subtracted first, in place when no gradient is wanted: ``x`` is its producer's fresh output in a folded
    model.
    """

    MIN_POSITIONS_PER_BORDER = 20

    def __init__(self, conv: nn.Conv2d, mean: torch.Tensor) -> None:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or conv.bias is not None:
            raise ValueError("CenteredConv2d needs a zero-padded conv without bias")
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            self.register_buffer("mean", mean.to(self.weight.dtype).view(-1, 1, 1))
            self.bias.copy_(-self._conv_of_mean(*(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size,
                                                                                 strict=True)), padded=False).view(-1))
        self.requires_grad_(False)
        self._strips: dict[tuple, list[tuple[tuple[slice, slice], torch.Tensor]]] = {}

    def _conv_of_mean(self, height: int, width: int, padded: bool = True) -> torch.Tensor:
        """``conv(E 1)`` of an ``height`` x ``width`` map of ``E`` (float64), zero padded or not."""
        ones = self.mean.double().expand(1, -1, height, width)
        return F.conv2d(ones, self.weight.double(), None, self.stride, self.padding if padded else 0, self.dilation,
                        self.groups)[0]

    def _border_strips(self, x: torch.Tensor) -> list[tuple[tuple[slice, slice], torch.Tensor]] | None:
        """The (rows, columns) strips of the output where ``D`` is nonzero, with ``D`` there; ``None`` where the
        correction does not pay (see the class docstring)."""
        height, width = x.shape[-2:]
        key = (height, width, x.dtype, x.device)
        if key not in self._strips:
            (rows, top, bottom), (cols, left, right) = (
                _border(n, k, s, p, d) for n, k, s, p, d in zip((height, width), self.kernel_size, self.stride,
                                                                  self.padding, self.dilation, strict=True))
            border = rows * cols - (rows - top - bottom) * (cols - left - right)
            strips = None
            if height * width >= self.MIN_POSITIONS_PER_BORDER * border:
                with torch.no_grad(), torch.inference_mode(False):
                    d = (-self.bias.double().view(-1, 1, 1) - self._conv_of_mean(height, width)).to(x.dtype)
                inner = slice(top, rows - bottom)
                strips = [(region, d[(slice(None), *region)].clone())
                          for region, n in (((slice(0, top), slice(None)), top),
                                            ((slice(rows - bottom, rows), slice(None)), bottom),
                                            ((inner, slice(0, left)), left),
                                            ((inner, slice(cols - right, cols)), right)) if n]
            self._strips[key] = strips
        return self._strips[key]

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._strips.clear()  # new weights, new border correction
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exporting = torch.compiler.is_compiling() or torch.jit.is_tracing()
        strips = None if exporting else self._border_strips(x)
        if strips is None:
            x = x - self.mean if torch.is_grad_enabled() else x.sub_(self.mean)
            return self._conv_forward(x, self.weight, None)
        out = self._conv_forward(x, self.weight, self.bias)  # conv(x) - c
        for (rows, cols), d in strips:  # + D on the border
            out[:, :, rows, cols] += d
        return out


@torch.no_grad()
def _scale_inputs(layer: nn.Conv2d | nn.Linear, scale: torch.Tensor) -> None:
    """``layer(x * scale) == layer'(x)``: multiply each input channel's weights (grouped convs too)."""
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    layer.weight.copy_(scale_inputs(layer.weight.double(), scale.double(), groups))


@torch.no_grad()
def _shift_inputs(layer: nn.Conv2d | nn.Linear, shift: torch.Tensor) -> None:
    """``layer(x + shift) == layer'(x)`` for a linear layer or an unpadded, ungrouped 1x1 conv."""
    if isinstance(layer, nn.Conv2d):
        assert layer.kernel_size == (1, 1) and layer.padding == (0, 0) and layer.groups == 1
    w = layer.weight.double().reshape(layer.weight.shape[0], -1)
    delta = (w @ shift.double()).to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(delta, requires_grad=False)
    else:
        layer.bias.add_(delta)


def _is_pointwise(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.padding == (0, 0)
            and conv.groups == 1)


def _affine(pn: ProxyNormAct2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(scale, shift, E)`` of Eq. 4, in float64."""
    with torch.no_grad():
        scale, shift = (t.double() for t in pn.proxy_affine())
    return scale, shift, -shift / scale


def _fold_into_next(norm_act: ProxyNormAct2d, consumer: nn.Module) -> tuple[FoldedNormAct2d, nn.Module]:
    """Fold a PN layer's affine into the conv/linear ``consumer`` that takes its output: the folded norm, and
    the layer to use in place of ``consumer`` (itself, updated in place, or a :class:`CenteredConv2d`)."""
    scale, shift, mean = _affine(norm_act)
    if _is_pointwise(consumer) or isinstance(consumer, nn.Linear):
        _shift_inputs(consumer, shift)
        _scale_inputs(consumer, scale)
        return FoldedNormAct2d(norm_act), consumer
    _scale_inputs(consumer, scale)  # k x k, zero padded: the shift becomes a CenteredConv2d
    return FoldedNormAct2d(norm_act), CenteredConv2d(consumer, mean)


def _has_pn(layer: nn.Module) -> bool:
    """A conv + norm whose norm is a proxy-normalized activation."""
    return isinstance(layer, ConvNormAct) and isinstance(layer.norm, ProxyNormAct2d)


def _fold_block(block: MBConv) -> None:
    if _has_pn(block.expand):
        block.expand.norm, block.spatial.conv = _fold_into_next(block.expand.norm, block.spatial.conv)
    if _has_pn(block.spatial):
        pn = block.spatial.norm
        scale, shift, mean = _affine(pn)
        _shift_inputs(block.se.reduce, shift)  # the SE pools z = s a + t: exact into its 1x1 reduce
        _scale_inputs(block.se.reduce, scale)
        _scale_inputs(block.project.conv, scale)
        block.se = FoldedSqueezeExcite(block.se, mean)
        block.spatial.norm = FoldedNormAct2d(pn)


def fold_proxy_norm(model: nn.Module) -> nn.Module:
    """Fold every proxy-normalized activation of an eval-mode ``model`` for inference, in place.

    Eq. 4's per-channel affine moves into the following linear layers wherever that is exact (see the
    module docstring for which part goes where); every other PN layer keeps its affine as a constant.
    Afterwards no layer computes proxy moments and no :class:`ProxyNormAct2d` remains;
    outputs match the unfolded model up to float rounding. Models without PN are returned unchanged.

    Returns:
        ``model`` (modified in place), for chaining.

    Raises:
        ValueError: ``model`` is in training mode (folding freezes the moments of the current parameters), or
            it is a fused model (:func:`peffnet.fusion.fuse_proxy_norm`).
    """
    if model.training:
        raise ValueError("fold_proxy_norm needs a model in eval mode; call model.eval() first")
    if any(isinstance(m, (FusedConvNormAct, FusedMBConv)) for m in model.modules()):
        raise ValueError("fold_proxy_norm folds the plain model, not a fused one: load this model's state_dict "
                         "into peffnet.create_model(...) and fold that")
    stages = getattr(model, "stages", None)
    blocks = [b for stage in stages for b in stage if isinstance(b, MBConv)] if stages is not None else []
    stem, head = getattr(model, "stem", None), getattr(model, "head", None)
    if blocks and _has_pn(stem) and not blocks[0].has_residual:
        consumer = blocks[0].expand if _has_pn(blocks[0].expand) else blocks[0].spatial
        stem.norm, consumer.conv = _fold_into_next(stem.norm, consumer.conv)
    for block in blocks:
        _fold_block(block)
    classifier, pool = getattr(model, "classifier", None), getattr(model, "pool", None)
    if _has_pn(head) and isinstance(classifier, nn.Linear) and getattr(pool, "pool_type", None) == "avg":
        head.norm, model.classifier = _fold_into_next(head.norm, classifier)  # average pooling commutes with it
    for name, module in list(model.named_modules()):  # anything else: the cached affine as a constant
        if name and isinstance(module, ProxyNormAct2d):
            scale, shift, _ = _affine(module)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, FoldedNormAct2d(module, (scale, shift)))
    return model
