"""Proxy-normalized activations (paper Section 3.2, Eq. 3-4; Labatie et al., 2021).

After a batch-independent normalization (LN, Eq. 3, or GN) of the pre-activations ``Y``, Eq. 4 applies

    Z_c = (phi(gamma_c Y_c + beta_c) - E[phi(gamma_c Ỹ_c + beta_c)]) / sqrt(Var[phi(gamma_c Ỹ_c + beta_c)] + eps~)

with the Gaussian *proxy* ``Ỹ_c ~ N(beta~_c, (1 + gamma~_c)^2)``. The proxy moments depend on the four
per-channel parameters only, never on the batch or the resolution: they cost O(channels) per forward
(:func:`peffnet.layers.proxy_moments.proxy_norm_moments`) and, in eval mode, are computed once and cached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from peffnet.layers.proxy_moments import proxy_affine, proxy_norm_moments

NORM_EPS = 1e-3  # eps of the LN/GN step (Eq. 3), paper Section 3.4
PROXY_EPS = 3e-2  # eps~ of Eq. 4 (REFERENCE.md)

__all__ = ["NORM_EPS", "PROXY_EPS", "ProxyNormAct2d", "prepare_proxy_norm", "proxy_affine", "proxy_norm_moments",
           "scale_inputs"]


def _channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The per-channel vector ``v`` shaped to broadcast over ``x``'s channel dim (dim 1), in ``x``'s dtype."""
    return v.to(x.dtype).view((-1,) + (1,) * (x.dim() - 2))


def channel_affine_(x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` per channel (dim 1), in place; ``scale=None`` only adds ``shift``.

    Two in-place broadcast passes, not one ``addcmul``: on CPU the binary kernels vectorize the (C, 1, 1)
    broadcast and run about 1.5x faster than the ternary one (profiled with ``benchmarks/bench_norms.py``).
    """
    if scale is not None:
        x.mul_(_channel_view(scale, x))
    return x.add_(_channel_view(shift, x))


def _flat(t: torch.Tensor) -> bool:
    """Whether per-channel reductions over ``t`` are faster on its (N, C * H * W) view: NCHW-contiguous with
    small maps (<= 16 positions), where reducing over (N, H, W) directly runs very short inner loops."""
    return t.dim() > 2 and t.is_contiguous() and math.prod(t.shape[2:]) <= 16


def _channel_sum(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Sum over every dim but the channels (dim 1)."""
    if _flat(t):
        return t.view(t.shape[0], -1).sum(0, dtype=dtype).view(t.shape[1], -1).sum(1)
    return t.sum([0, *range(2, t.dim())], dtype=dtype)


def _channel_dot(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(a * b)`` summed over every dim but the channels."""
    if _flat(a) or a.dim() <= 2 or not (a.is_contiguous() and b.is_contiguous()):
        return _channel_sum(a * b, dtype)
    n, c = a.shape[:2]
    return torch.linalg.vecdot(a.view(n, c, -1), b.view(n, c, -1)).sum(0, dtype=dtype)


def _values_key(t: torch.Tensor) -> tuple:
    """Identifies ``t``'s current values for a cache: storage, version counter (bumped by every in-place
    update) and dtype. An inference tensor has no version counter (``None``): do not cache on it."""
    return t.data_ptr(), None if t.is_inference() else t._version, t.dtype


def scale_inputs(weight: torch.Tensor, scale: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """The weight of a conv (``groups`` input-channel groups) or linear layer with input channel ``c``
    multiplied by ``scale[c]``: ``layer(x * scale) == layer'(x)`` (zero padding included). Differentiable."""
    out_ch, per_group = weight.shape[:2]
    factor = scale.to(weight.dtype).view(groups, 1, per_group).expand(groups, out_ch // groups, per_group)
    return weight * factor.reshape(out_ch, per_group, *(1,) * (weight.dim() - 2))


class _ChannelAffine(torch.autograd.Function):
    """``a * scale + shift`` per channel, written into ``a`` (a fresh activation).

    In place, so PN stores no activation beyond what GN + swish store: the backward recovers
    ``a = (z - shift) / scale`` from the output ``z`` (``scale > 0``), which the next conv keeps anyway.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(a)
        channel_affine_(a, scale, shift)
        ctx.save_for_backward(a, scale, shift)
        return a  # the dirty input itself, as torch.compile requires

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, scale, shift = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last if not z.is_contiguous() else torch.contiguous_format)
        grad_shift = _channel_sum(grad, shift.dtype)
        grad_scale = (_channel_dot(grad, z, scale.dtype) - shift * grad_shift) / scale
        return grad * _channel_view(scale, grad), grad_scale, grad_shift


class _ChannelShift(torch.autograd.Function):
    """``a + shift`` per channel, written into ``a`` (a fresh activation); the gradient passes through, and
    ``shift``'s gradient is summed in ``shift``'s dtype (float32 for half-precision activations)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(a)
        ctx.shift_dtype = shift.dtype
        channel_affine_(a, None, shift)
        return a

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, _channel_sum(grad, ctx.shift_dtype)


class ProxyNormAct2d(nn.Module):
    """Batch-independent normalization followed by a proxy-normalized swish (Eq. 3-4).

    ``groups=1`` is LN over (C, H, W) of each image (Eq. 3), ``groups=4`` is GN; the normalization has no
    affine of its own (eps 1e-3). With ``act=True`` the layer owns Eq. 4's ``gamma`` (``weight``), ``beta``
    (``bias``), ``gamma~`` (``proxy_weight``) and ``beta~`` (``proxy_bias``), the tilde parameters
    initialised to 0 (and weight-decayed by :func:`peffnet.training.optim.param_groups`), eps~ 3e-2. With
    ``act=False`` (after the projection conv) it is the normalization with a per-channel scale, no shift
    and no PN, as in the authors' reference (REFERENCE.md).

    Forward: ``group_norm`` with ``gamma``/``beta`` fused in as its affine, swish in place, then Eq. 4 as the
    per-channel affine ``(a - E) / sqrt(Var + eps~)`` in place. In eval mode (without gradients to the
    parameters) that affine is computed once and cached until a parameter changes: the cache is keyed on
    each parameter's storage and version counter, and dropped by ``train()``/``eval()`` and
    ``load_state_dict``. Edits through ``param.data`` bypass version counters: call :meth:`clear_cache`.
    """

    def __init__(self, channels: int, groups: int = 1, act: bool = True, eps: float = NORM_EPS,
                 proxy_eps: float = PROXY_EPS) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels cannot be split into {groups} normalization groups")
        self.channels, self.groups, self.act = channels, groups, act
        self.eps, self.proxy_eps = eps, proxy_eps
        self.weight = nn.Parameter(torch.ones(channels))
        if act:
            self.bias = nn.Parameter(torch.zeros(channels))
            self.proxy_weight = nn.Parameter(torch.zeros(channels))
            self.proxy_bias = nn.Parameter(torch.zeros(channels))
        self._cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        self._pending: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def _parameters_key(self) -> tuple:
        """Identifies the current values of Eq. 4's parameters (:func:`_values_key`)."""
        params = (self.weight, self.bias, self.proxy_weight, self.proxy_bias)
        return (torch.is_inference_mode_enabled(), *map(_values_key, params))

    def _cacheable(self) -> bool:
        """Eval mode without gradients to the parameters: the affine is a constant worth caching (unless the
        parameters are inference tensors, made under ``torch.inference_mode``: they have no version counter)."""
        params = (self.weight, self.bias, self.proxy_weight, self.proxy_bias)
        return (not self.training and not self.weight.is_meta and not torch.compiler.is_compiling()
                and not any(p.is_inference() for p in params)
                and not (torch.is_grad_enabled() and any(p.requires_grad for p in params)))

    def proxy_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4 as a per-channel affine of ``a = swish(gamma y + beta)``: ``(scale, shift)`` with
        ``scale = 1 / sqrt(Var + eps~)`` and ``shift = -E * scale`` (float32 or wider).

        Taken from :func:`prepare_proxy_norm` when it computed this layer's affine for the current
        parameters (used once), else from the eval cache, else computed here.
        """
        if self._pending is not None:
            pending, self._pending = self._pending, None
            if pending[0] == self._parameters_key():
                return pending[1], pending[2]
        cacheable = self._cacheable()
        if cacheable:
            key = self._parameters_key()
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1], self._cache[2]
        scale, shift = proxy_affine("swish", self.weight, self.bias, self.proxy_weight, self.proxy_bias,
                                    self.proxy_eps)
        if cacheable:
            self._cache = (key, scale, shift)
        return scale, shift

    def clear_cache(self) -> None:
        """Forget the cached eval-mode moments (needed only after edits through ``param.data``)."""
        self._cache = self._pending = None

    def train(self, mode: bool = True) -> ProxyNormAct2d:
        self.clear_cache()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def activate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a, scale, shift)``: ``a = swish(gamma Y + beta)`` and Eq. 4's affine still to apply, ``a * scale +
        shift``, for a consumer that applies it for free (the squeeze-excite gate, :class:`~peffnet.layers.
        blocks.SqueezeExcite`). Needs ``act=True``."""
        a = F.silu(F.group_norm(x, self.groups, self.weight, self.bias, self.eps), inplace=True)
        return a, *self.proxy_affine()

    def activate_centered(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a - E, scale)``: Eq. 4 is ``z = scale * (a - E)``, and the scale is left to the linear layer that
        consumes ``z`` (:func:`scale_inputs`). Exact through any convolution, zero padding included: a
        zero-padded ``z`` is ``scale`` times the zero-padded ``a - E``. Needs ``act=True``."""
        a, scale, shift = self.activate(x)
        mean = shift / scale  # -E
        if a.dtype != mean.dtype and torch.is_grad_enabled() and (a.requires_grad or mean.requires_grad):
            return _ChannelShift.apply(a, mean), scale  # sums E's gradient in E's (wider) dtype
        return channel_affine_(a, None, mean), scale  # autograd's own in-place add: no Python backward node

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.act:
            return F.group_norm(x, self.groups, self.weight, None, self.eps)
        x, scale, shift = self.activate(x)  # phi(gamma Y + beta)
        if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
            return _ChannelAffine.apply(x, scale, shift)  # Eq. 4
        return channel_affine_(x, scale, shift)

    def extra_repr(self) -> str:
        return f"{self.channels}, groups={self.groups}, act={self.act}, eps={self.eps}, proxy_eps={self.proxy_eps}"


def prepare_proxy_norm(model: nn.Module) -> None:
    """Compute Eq. 4's affine of every PN layer of ``model`` that would compute it in this forward (training,
    or gradients wanted) in one batched call, for each layer to take once in its forward.

    Exactly the per-layer computation: the moments are per channel, so concatenating the channels of all
    33 layers of a B0 changes nothing but the number of (tiny) ops, whose per-op overhead is what the
    moments cost (Section 3.2: O(channels), independent of batch and resolution). Gradients flow back
    through the concatenation to each layer's parameters. Not under grad checkpointing (recomputed blocks
    must record what the original forward recorded) nor while compiling.
    """
    if torch.compiler.is_compiling():
        return
    groups: dict[tuple, list[ProxyNormAct2d]] = {}
    for m in model.modules():
        if isinstance(m, ProxyNormAct2d) and m.act and not m._cacheable():
            groups.setdefault((m.proxy_eps, m.weight.dtype, m.weight.device), []).append(m)
    for (eps, _, _), layers in groups.items():
        params = [torch.cat([getattr(m, n) for m in layers])
                  for n in ("weight", "bias", "proxy_weight", "proxy_bias")]
        sizes = [m.channels for m in layers]
        for m, scale, shift in zip(layers, *(t.split(sizes) for t in proxy_affine("swish", *params, eps)),
                                   strict=True):
            m._pending = (m._parameters_key(), scale, shift)
