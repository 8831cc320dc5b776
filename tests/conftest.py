"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import torch

import peffnet
from peffnet.models import build, preset


def meta_model(name: str, **overrides: object) -> peffnet.EfficientNet:
    """Build a model on the meta device (shapes only, instant even for B7)."""
    with torch.device("meta"):
        return build(preset(name, **overrides))
