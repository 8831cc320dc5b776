"""Register the presets in timm's model registry as ``peffnet_<name>``.

The ``peffnet_`` prefix keeps timm's own ``efficientnet_b0`` etc. untouched. After ``import peffnet``,
``timm.create_model("peffnet_g16_efficientnet_b0", norm="lnpn", num_classes=10)`` builds our model and
timm's tooling (``timm.list_models("peffnet_*")``, its data config resolution) sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peffnet.errors import ConfigError
from peffnet.models import create_model, list_models, preset

# Keys timm's factory passes that our builder does not take.
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")
PREFIX = "peffnet_"
default_cfgs: dict[str, dict[str, Any]] = {}


def _entrypoint(name: str) -> Callable[..., Any]:
    def fn(pretrained: bool = False, **kwargs: Any) -> Any:
        if pretrained:
            raise ConfigError(f"no pretrained weights are shipped for {name}; train with `peffnet train`")
        for key in _TIMM_ONLY_KWARGS:
            kwargs.pop(key, None)
        model = create_model(name, **kwargs)
        model.pretrained_cfg = model.default_cfg = dict(default_cfgs[PREFIX + name])
        return model

    fn.__name__ = PREFIX + name
    fn.__qualname__ = fn.__name__
    fn.__module__ = __name__
    fn.__doc__ = f"peffnet {name} (see peffnet.create_model for the overrides)."
    return fn


def register() -> list[str]:
    """Register every preset with timm; returns the registered names."""
    from timm.models import register_model

    names = []
    for name in list_models():
        res = preset(name).resolution
        default_cfgs[PREFIX + name] = {
            "url": "", "num_classes": 1000, "input_size": (3, res, res), "pool_size": (res // 32, res // 32),
            "crop_pct": 224 / 256, "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "first_conv": "stem.conv", "classifier": "classifier",
        }
        fn = _entrypoint(name)
        globals()[fn.__name__] = fn
        register_model(fn)
        names.append(fn.__name__)
    return names
