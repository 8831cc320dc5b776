"""Normalization + activation layers (timm's norm-act pattern), one factory for all five choices.

``bn``   BatchNorm (batch-dependent; the EfficientNet original).
``gn``   GroupNorm with 4 *groups* (paper Section 3.4; docs/reference.md), eps 1e-3.
``ln``   LayerNorm over (C, H, W) of each image = GroupNorm with one group, eps 1e-3.
``lnpn`` LN without affine, then a proxy-normalized activation owning gamma/beta (Eq. 3-4).
``gnpn`` GN (4 groups) without affine, then a proxy-normalized activation.
"""

import torch
import torch.nn.functional as F
from torch import nn

from peffnet.layers.normalization import NORM_EPS, group_norm
from peffnet.layers.proxy_norm import ProxyNormAct2d

GN_GROUPS = 4

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
    there is nothing for Eq. 4 to proxy), as in the authors' reference (docs/reference.md, "where PN goes"): a
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
        return ProxyNormAct2d(channels, groups)
    raise ValueError(f"unknown norm {norm!r}")
