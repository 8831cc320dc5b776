"""Passes over a plain model: the fused CPU training form and the folded inference form of proxy norm."""

from peffnet.fusion.fold import fold_proxy_norm
from peffnet.fusion.fuse import fuse_proxy_norm

__all__ = ["fold_proxy_norm", "fuse_proxy_norm"]
