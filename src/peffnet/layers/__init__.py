"""The plain layers of the G-EfficientNet family (paper Section 3.1-3.2): blocks, norm-act layers, proxy norm."""

from peffnet.layers.blocks import ConvNormAct, MBConv, SqueezeExcite
from peffnet.layers.norm_act import BatchNormAct2d, GroupNormAct, ScaledGroupNorm, norm_act
from peffnet.layers.proxy_moments import proxy_affine, proxy_norm_moments, swish_proxy_affine
from peffnet.layers.proxy_norm import ProxyNormAct2d

__all__ = ["BatchNormAct2d", "ConvNormAct", "GroupNormAct", "MBConv", "ProxyNormAct2d", "ScaledGroupNorm",
           "SqueezeExcite", "norm_act", "proxy_affine", "proxy_norm_moments", "swish_proxy_affine"]
