"""Normalization + activation layers (timm's norm-act pattern), one factory for all five choices.

``bn``   BatchNorm (batch-dependent; the EfficientNet original).
``gn``   GroupNorm with 4 *groups* (paper Section 3.4; REFERENCE.md), eps 1e-3.
``ln``   LayerNorm over (C, H, W) of each image = GroupNorm with one group, eps 1e-3.
``lnpn`` LN without affine, then a proxy-normalized activation owning gamma/beta (Eq. 3-4).
``gnpn`` GN (4 groups) without affine, then a proxy-normalized activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-3  # paper Section 3.4: epsilon of BN/GN/LN
GN_GROUPS = 4


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float) -> torch.Tensor:
    """``F.group_norm`` with its statistics in float32 and its output in ``x``'s dtype, the same on every device.

    Under mixed precision the two autocast policies differ: CUDA's runs ``group_norm`` in float32 and hands
    on float32, so the swish, proxy norm's affine (Eq. 4) and the activations kept for the backward pass would
    all run and be stored in float32; CPU's runs it on the bfloat16 input and hands on bfloat16. So the path
    tested on a CPU was not the one a GPU took. Here both normalize a float32 copy (neither policy casts a
    float32 input down) and pass on the half-precision activations the next convolution takes anyway.
    LayerNorm (one group) of a channels_last input on CUDA runs on its NHWC memory (:func:`layer_norm_nhwc`).
    """
    if groups == 1 and x.is_cuda and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return layer_norm_nhwc(x, weight, bias, eps)
    if x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        w = weight.float() if weight is not None else None
        b = bias.float() if bias is not None else None
        return F.group_norm(x.float(), groups, w, b, eps).to(x.dtype)
    return F.group_norm(x, groups, weight, bias, eps)


def layer_norm_nhwc(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                    eps: float) -> torch.Tensor:
    """LayerNorm over (C, H, W) of each image (GroupNorm with one group) computed on the channels_last memory as
    it lies: the NHWC view's last three dimensions, then the per-channel affine along its last one. On CUDA,
    ``F.group_norm`` copies a channels_last input to NCHW and back; ``group_norm`` takes this path there.
    Statistics in float32, the output in ``x``'s dtype and layout."""
    nhwc = x.permute(0, 2, 3, 1)
    y = F.layer_norm(nhwc.float(), nhwc.shape[1:], eps=eps)
    if weight is not None:
        y = y * weight.float() if bias is None else torch.addcmul(bias.float(), y, weight.float())
    return y.to(x.dtype).permute(0, 3, 1, 2)


torch.fx.wrap("group_norm")  # a leaf for torch.fx: its dtype test is not traced


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm followed by an optional SiLU (swish).

    The normalization is ``nn.BatchNorm2d``'s, running statistics included, written out with ``F.batch_norm``
    so that ``torch.fx`` traces it and TorchScript compiles it (``nn.BatchNorm2d.forward`` does neither here).
    """

    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(channels, eps=NORM_EPS)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum  # as nn.BatchNorm2d
        batches = self.num_batches_tracked
        if self.training and batches is not None:
            batches.add_(1)
            if self.momentum is None:  # a cumulative average
                factor = 1.0 / float(batches)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, factor,
                         self.eps)
        return F.silu(x, inplace=True) if self.act else x  # in place: x is BN's fresh output


class GroupNormAct(nn.GroupNorm):
    """GroupNorm (LN when ``groups == 1``) followed by an optional SiLU (swish)."""

    def __init__(self, channels: int, groups: int, act: bool = True) -> None:
        super().__init__(groups, channels, eps=NORM_EPS)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.silu(x, inplace=True) if self.act else x  # in place: x is GN's fresh output


class ScaledGroupNorm(nn.Module):
    """GroupNorm (LN when ``groups == 1``) with a per-channel scale (``weight``) and no shift, no activation.

    The normalization after the projection conv of the PN models (the projection has no activation, so
    there is nothing for Eq. 4 to proxy), as in the authors' reference (REFERENCE.md, "Placement"): a
    per-channel shift there would add a constant offset to the residual stream.
    """

    def __init__(self, channels: int, groups: int = 1, eps: float = NORM_EPS) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels cannot be split into {groups} normalization groups")
        self.channels, self.groups, self.eps = channels, groups, eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.groups, self.weight, None, self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, groups={self.groups}, eps={self.eps}"


def norm_act(norm: str, channels: int, act: bool = True) -> nn.Module:
    """The normalization (+ swish when ``act``) layer that follows a convolution.

    For the PN variants, ``act=True`` gives :class:`~peffnet.layers.proxy_norm.ProxyNormAct2d` (Eq. 3-4) and
    ``act=False`` (after the projection conv) the :class:`ScaledGroupNorm`.
    """
    if norm == "bn":
        return BatchNormAct2d(channels, act)
    if norm in ("gn", "ln"):
        return GroupNormAct(channels, GN_GROUPS if norm == "gn" else 1, act)
    if norm in ("lnpn", "gnpn"):
        groups = 1 if norm == "lnpn" else GN_GROUPS
        if not act:
            return ScaledGroupNorm(channels, groups)
        from peffnet.layers.proxy_norm import ProxyNormAct2d  # it imports NORM_EPS from here

        return ProxyNormAct2d(channels, groups)
    raise ValueError(f"unknown norm {norm!r}")
