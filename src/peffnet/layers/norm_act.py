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


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm followed by an optional SiLU (swish)."""

    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(channels, eps=NORM_EPS)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return F.silu(x, inplace=True) if self.act else x  # in place: x is BN's fresh output


class GroupNormAct(nn.GroupNorm):
    """GroupNorm (LN when ``groups == 1``) followed by an optional SiLU (swish)."""

    def __init__(self, channels: int, groups: int, act: bool = True) -> None:
        super().__init__(groups, channels, eps=NORM_EPS)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.silu(x, inplace=True) if self.act else x  # in place: x is GN's fresh output


def norm_act(norm: str, channels: int, act: bool = True) -> nn.Module:
    """The normalization (+ swish when ``act``) layer that follows a convolution.

    For the PN variants, ``act=False`` (after the projection conv) gives the normalization with a
    per-channel scale and no shift and no PN, as in the authors' reference (REFERENCE.md).
    """
    if norm == "bn":
        return BatchNormAct2d(channels, act)
    if norm in ("gn", "ln"):
        return GroupNormAct(channels, GN_GROUPS if norm == "gn" else 1, act)
    if norm in ("lnpn", "gnpn"):
        from peffnet.layers.proxy_norm import ProxyNormAct2d

        return ProxyNormAct2d(channels, groups=1 if norm == "lnpn" else GN_GROUPS, act=act)
    raise ValueError(f"unknown norm {norm!r}")
