"""The MBConv block with a grouped spatial convolution, and its squeeze-excite (paper Section 3.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from peffnet.layers.norms import norm_act


class ConvNormAct(nn.Sequential):
    """Convolution (no bias) followed by a norm-act layer; ``groups`` splits the input channels."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, norm: str, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        super().__init__(conv, norm_act(norm, out_ch, act))


class SqueezeExcite(nn.Module):
    """Channel gating: global pool -> 1x1 reduce -> swish -> 1x1 expand -> sigmoid (no norm, no PN)."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(F.silu(self.reduce(s)))
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> k x k grouped conv -> SE -> 1x1 project (+ residual).

    ``group_size`` is the number of input channels per group of the spatial conv (G=1 is depthwise).
    The expansion conv is skipped when ``expand_ratio == 1`` (stage 1).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand_ratio: int,
                 group_size: int, se_channels: int, norm: str, drop_path: float = 0.0) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        self.expand = ConvNormAct(in_ch, mid, 1, norm) if expand_ratio != 1 else nn.Identity()
        self.spatial = ConvNormAct(mid, mid, kernel, norm, stride=stride, groups=mid // group_size)
        self.se = SqueezeExcite(mid, se_channels)
        self.project = ConvNormAct(mid, out_ch, 1, norm, act=False)
        self.has_residual = stride == 1 and in_ch == out_ch
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.spatial(self.expand(x))))
        return x + self.drop_path(y) if self.has_residual else y
