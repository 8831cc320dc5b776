"""In-place per-channel ops and their autograd Functions, for the fused form of proxy norm (Eq. 4).

Eq. 4 is a per-channel affine ``z = a * scale + shift`` of a fresh activation ``a = swish(gamma y + beta)``.
Written in place, it stores no tensor beyond what GN + swish store; these are the pieces
:mod:`peffnet.fusion.fuse` and :mod:`peffnet.fusion.fold` build from.
"""

import math

import torch
from torch.autograd.function import once_differentiable


def channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The per-channel vector ``v`` shaped to broadcast over ``x``'s channel dim (dim 1), in ``x``'s dtype."""
    return v.to(x.dtype).view((-1,) + (1,) * (x.dim() - 2))


def channel_affine_(x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` per channel (dim 1), in place; ``scale=None`` only adds ``shift``.

    Two in-place broadcast passes, not one ``addcmul``: on CPU the binary kernels vectorize the (C, 1, 1)
    broadcast and run about 1.5x faster than the ternary one (profiled with ``benchmarks/bench_norms.py``).
    """
    if scale is not None:
        x.mul_(channel_view(scale, x))
    return x.add_(channel_view(shift, x))


def _flat(t: torch.Tensor) -> bool:
    """Whether per-channel reductions over ``t`` are faster on its (N, C * H * W) view: NCHW-contiguous with
    small maps (<= 16 positions), where reducing over (N, H, W) directly runs very short inner loops."""
    return t.dim() > 2 and t.is_contiguous() and math.prod(t.shape[2:]) <= 16


def channel_sum(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Sum over every dim but the channels (dim 1), accumulated in ``dtype``."""
    if _flat(t):
        return t.view(t.shape[0], -1).sum(0, dtype=dtype).view(t.shape[1], -1).sum(1)
    return t.sum([0, *range(2, t.dim())], dtype=dtype)


def channel_dot(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(a * b)`` summed over every dim but the channels."""
    if _flat(a) or a.dim() <= 2 or not (a.is_contiguous() and b.is_contiguous()):
        return channel_sum(a * b, dtype)
    n, c = a.shape[:2]
    return torch.linalg.vecdot(a.view(n, c, -1), b.view(n, c, -1)).sum(0, dtype=dtype)


def scale_inputs(weight: torch.Tensor, scale: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """The weight of a conv (``groups`` input-channel groups) or linear layer with input channel ``c``
    multiplied by ``scale[c]``: ``layer(x * scale) == layer'(x)`` (zero padding included: a padded zero
    stays zero after scaling). O(parameters), not a pass over ``x``; differentiable."""
    out_ch, per_group = weight.shape[:2]
    factor = scale.to(weight.dtype).view(groups, 1, per_group).expand(groups, out_ch // groups, per_group)
    return weight * factor.reshape(out_ch, per_group, *(1,) * (weight.dim() - 2))


class ChannelAffine(torch.autograd.Function):
    """``a * scale + shift`` per channel, written into ``a`` (a fresh activation).

    In place, so the layer stores no activation beyond what GN + swish store: the backward recovers
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
        grad_shift = channel_sum(grad, shift.dtype)
        grad_scale = (channel_dot(grad, z, scale.dtype) - shift * grad_shift) / scale
        return grad * channel_view(scale, grad), grad_scale, grad_shift


class ChannelShift(torch.autograd.Function):
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
        return grad, channel_sum(grad, ctx.shift_dtype)
