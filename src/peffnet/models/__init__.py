"""The model family: names, configurations and the builder."""

from __future__ import annotations

from collections.abc import Sequence

from peffnet.errors import ConfigError
from peffnet.models.config import DEFAULT_NORM, NORMS, ModelConfig, ModelOverrides, model_names, preset
from peffnet.models.efficientnet import EfficientNet, build
from peffnet.models.features import DEFAULT_OUT_INDICES, EfficientNetFeatures, refuse_classifier_settings


def list_models(with_norms: bool = False) -> list[str]:
    """Preset names: ``efficientnet_b0..b7`` (G1, E6), ``g4_efficientnet_bN`` (G4, E5),
    ``g16_efficientnet_bN`` (G16, E4); with ``with_norms`` also each with a norm suffix
    (``g16_efficientnet_b0_lnpn``). A name without a suffix has the norm :data:`DEFAULT_NORM` (bn)."""
    return model_names(with_norms)


def create_model(name: str, features_only: bool = False, out_indices: int | Sequence[int] | None = None,
                 **overrides: object) -> EfficientNet | EfficientNetFeatures:
    """Build a preset (a name from :func:`list_models`, norm suffix allowed), optionally overriding
    ``group_size``, ``expansion``, ``norm``, ``num_classes`` (0: no classifier), ``global_pool``, ``in_chans``,
    ``drop_rate``, ``drop_path_rate`` or the native ``resolution``.

    With ``features_only`` it builds the backbone (:class:`EfficientNetFeatures`): the feature maps of the
    levels ``out_indices`` (default all five: strides 2, 4, 8, 16, 32), without head or classifier.

    Raises:
        ValueError: (a :class:`peffnet.errors.ConfigError`) for an unknown name, a bad value, an
            ``out_indices`` out of range, or classifier settings given to a backbone.
    """
    if not features_only:
        if out_indices is not None:
            raise ConfigError("out_indices selects feature maps: pass features_only=True too")
        return build(preset(name, **overrides))
    refuse_classifier_settings(overrides)
    cfg = preset(name, num_classes=0, global_pool="", drop_rate=0.0, **overrides)
    return EfficientNetFeatures(cfg, DEFAULT_OUT_INDICES if out_indices is None else out_indices)


__all__ = ["DEFAULT_NORM", "NORMS", "EfficientNet", "EfficientNetFeatures", "ModelConfig", "ModelOverrides", "build",
           "create_model", "list_models", "preset"]
