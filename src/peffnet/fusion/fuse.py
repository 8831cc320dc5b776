"""The fused CPU training form of proxy norm (placeholder while the plain model still fuses internally)."""

from __future__ import annotations

from torch import nn


def fuse_proxy_norm(model: nn.Module) -> nn.Module:
    """Return ``model``: its blocks currently take the fused path themselves."""
    return model
