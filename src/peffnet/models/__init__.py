"""The model family: names, configurations and the builder."""

from __future__ import annotations

from peffnet.models.config import ModelConfig, ModelOverrides, model_names, preset
from peffnet.models.efficientnet import EfficientNet, build


def list_models() -> list[str]:
    """Preset names: ``efficientnet_b0..b7`` (G1, E6), ``g4_efficientnet_bN`` (G4, E5),
    ``g16_efficientnet_bN`` (G16, E4)."""
    return model_names()


def create_model(name: str, **overrides: object) -> EfficientNet:
    """Build a preset, optionally overriding ``group_size``, ``expansion``, ``norm``, ``num_classes``,
    ``in_chans``, ``drop_rate``, ``drop_path_rate`` or the native ``resolution``.

    Raises:
        ValueError: (a :class:`peffnet.errors.ConfigError`) for an unknown name or a bad value.
    """
    return build(preset(name, **overrides))


__all__ = ["EfficientNet", "ModelConfig", "ModelOverrides", "build", "create_model", "list_models", "preset"]
