"""The MBConv block with a grouped spatial convolution, and its squeeze-excite (paper Section 3.1).

Plain modules that read top to bottom (as torchvision's MBConv): no state passes between layers and no
module mutates its input. :mod:`peffnet.fusion` rewrites proxy-normalized models for speed.
"""

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from peffnet.layers.norm_act import norm_act


class ConvNormAct(nn.Module):
    """Convolution (``conv``, no bias; ``groups`` splits the input channels) then a norm-act layer (``norm``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, norm: str, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.norm = norm_act(norm, out_ch, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class SqueezeExcite(nn.Module):
    """Channel gating: global pool -> 1x1 reduce -> swish -> 1x1 expand -> sigmoid (no norm, no PN)."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """The per-image, per-channel gate in (0, 1) for the spatial mean ``pooled`` (N, C, 1, 1)."""
        return torch.sigmoid(self.expand(F.silu(self.reduce(pooled))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean((2, 3), keepdim=True))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> k x k grouped conv -> SE -> 1x1 project (+ residual).

    ``group_size`` is the number of input channels per group of the spatial conv (G=1 is depthwise).
    The expansion conv is ``nn.Identity`` when ``expand_ratio == 1`` (stage 1).
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
        h = self.expand(x)
        h = self.spatial(h)
        h = self.se(h)
        h = self.project(h)
        return x + self.drop_path(h) if self.has_residual else h
