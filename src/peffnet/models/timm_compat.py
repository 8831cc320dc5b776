"""Register every preset with every norm in timm's model registry as ``peffnet_<name>``.

``import peffnet`` registers ``peffnet_<preset>`` (norm :data:`~peffnet.models.config.DEFAULT_NORM`) and
``peffnet_<preset>_<norm>`` for each norm: ``peffnet_g16_efficientnet_b0_lnpn`` is the paper's flagship,
G16 with LN+PN. The prefix keeps timm's own ``efficientnet_b0`` etc. untouched. Each name has a
``pretrained_cfg`` (:func:`~peffnet.models.config.data_config`; no weights) and is built through timm's
``build_model_with_cfg``, so ``timm.create_model`` behaves as for timm's own models. Every keyword is honoured
or refused with a one-line ``ValueError``:

* ``num_classes`` (0: no classifier), ``global_pool`` (``''``: none), ``in_chans``, ``drop_rate``,
  ``drop_path_rate``, and peffnet's ``group_size``, ``expansion``, ``norm`` (only the name's own with a
  suffixed name), ``resolution``: the model's settings;
* ``features_only`` with ``out_indices``: :class:`~peffnet.models.features.EfficientNetFeatures`; with
  ``feature_cls="getter"`` or ``"fx"`` (or ``feature_cfg``) timm's wrappers around the classifier;
* ``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``: timm's, as for any model; ``device``, ``dtype``;
* refused: ``pretrained=True`` (no weights are shipped), ``output_stride`` other than 32, timm's hook-based
  feature classes, classifier settings with ``features_only``, and any keyword peffnet does not know.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from timm.models import build_model_with_cfg, register_model
from timm.models._builder import pretrained_cfg_for_features
from torch import nn

from peffnet.errors import ConfigError
from peffnet.models import create_model, list_models, preset
from peffnet.models.config import data_config
from peffnet.models.efficientnet import take_indices
from peffnet.models.features import refuse_classifier_settings

PREFIX = "peffnet_"
FEATURE_CLASSES = ("getter", "fx")
"""timm's feature wrappers that work with peffnet models (they use ``forward_intermediates`` and FX tracing);
the hook-based ones need a sequential trunk."""
FEATURE_LEVELS = 5
default_cfgs: dict[str, dict[str, Any]] = {}  # timm's register_model reads this module's default_cfgs


def create(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """What ``timm.create_model(PREFIX + name, pretrained, **kwargs)`` builds (module docstring)."""
    variant = PREFIX + name
    if pretrained:
        raise ConfigError(f"no pretrained weights are shipped for {variant}; train with `peffnet train`")
    stride = kwargs.pop("output_stride", None)
    if stride not in (None, 32):
        raise ConfigError(f"output_stride={stride!r}: peffnet models have output stride 32 only (no dilated stages)")
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    features_only = kwargs.pop("features_only", False)
    feature_cfg = dict(kwargs.pop("feature_cfg", None) or {})
    if "feature_cls" in kwargs:
        feature_cfg["feature_cls"] = kwargs.pop("feature_cls")
    if not features_only and (feature_cfg or "out_indices" in kwargs):
        raise ConfigError("out_indices, feature_cls and feature_cfg select feature maps: pass features_only=True too")
    if features_only:
        refuse_classifier_settings(kwargs)
        out_indices = kwargs.get("out_indices", feature_cfg.get("out_indices"))
        take_indices(FEATURE_LEVELS, out_indices)  # a clear error for indices out of range, before any wrapper
    if not features_only:
        model = build_model_with_cfg(partial(create_model, name), variant, False, **kwargs)
    elif not feature_cfg:  # peffnet's own backbone, as timm's EfficientNet builds its own
        model = build_model_with_cfg(partial(create_model, name, features_only=True), variant, False,
                                     kwargs_filter=("num_classes", "global_pool"), **kwargs)
        model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    else:
        wrapper = feature_cfg.get("feature_cls")
        if wrapper not in FEATURE_CLASSES:
            raise ConfigError(f"feature_cls {wrapper!r} is not supported for peffnet models: leave it out (peffnet's "
                              f"backbone) or use {' or '.join(map(repr, FEATURE_CLASSES))}")
        model = build_model_with_cfg(partial(create_model, name, num_classes=0), variant, False, features_only=True,
                                     feature_cfg=feature_cfg, kwargs_filter=("num_classes",), **kwargs)
    return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    def fn(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create(name, pretrained, **kwargs)

    fn.__name__ = fn.__qualname__ = PREFIX + name
    fn.__module__ = __name__
    cfg = preset(name)
    fn.__doc__ = (f"peffnet {name}: G{cfg.group_size} E{cfg.expansion}, {cfg.norm} (keywords: "
                  f"peffnet.models.timm_compat).")
    return fn


def register() -> list[str]:
    """Register every preset with and without a norm suffix with timm; returns the registered names."""
    names = []
    for name in list_models(with_norms=True):
        default_cfgs[PREFIX + name] = data_config(preset(name))
        fn = _entrypoint(name)
        globals()[fn.__name__] = fn
        register_model(fn)
        names.append(fn.__name__)
    return names
