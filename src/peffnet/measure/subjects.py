"""The models a benchmark measures: a peffnet preset (``g16_efficientnet_b0``), ``timm:NAME`` or
``torchvision:NAME`` (always randomly initialised: nothing is downloaded); ``NAME@R`` sets its resolution."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from peffnet.errors import ConfigError
from peffnet.models import build, preset


@dataclass
class BenchSpec:
    """One model to measure: a name, builder overrides (peffnet models only) and per-model settings."""

    name: str
    overrides: dict[str, object] = field(default_factory=dict)
    resolution: int | None = None  # None: the model's native resolution
    channels_last: bool = False
    compile: bool = False
    fold_pn: bool = False  # inference only: proxy norm folded by peffnet.fold_proxy_norm
    label: str = ""
    form: str | None = None  # "plain" or "fused" (proxy-norm models); None: the form `peffnet train` picks here



def parse_spec(text: str, overrides: dict[str, object] | None = None, **settings: object) -> BenchSpec:
    """``NAME`` or ``NAME@R`` -> :class:`BenchSpec`; ``settings`` fill the other fields."""
    name, _, res = text.partition("@")
    resolution = settings.pop("resolution", None)
    if res:
        if not res.isdigit() or int(res) <= 0:
            raise ConfigError(f"bad resolution in {text!r}: expected NAME@PIXELS, e.g. efficientnet_b0@160")
        resolution = int(res)
    return BenchSpec(name, dict(overrides or {}), resolution, **settings)  # type: ignore[arg-type]


def build_model(spec: BenchSpec, num_classes: int = 1000) -> tuple[nn.Module, int, str]:
    """Build (randomly initialised) ``spec``; returns the model, its native resolution and a description."""
    kind, _, name = spec.name.rpartition(":")
    if kind and (spec.overrides or spec.fold_pn):
        what = f"model overrides ({', '.join(spec.overrides)})" if spec.overrides else "proxy-norm folding"
        raise ConfigError(f"{what} applies to peffnet models, not {spec.name!r}")
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model {name!r}; see timm.list_models()")
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        return model, int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]), "timm"
    if kind == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(f"unknown torchvision classification model {name!r}; "
                              "see torchvision.models.list_models(module=torchvision.models)")
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        try:  # the crop size of its published weights, read from metadata (nothing is downloaded)
            res = int(torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0])
        except (ValueError, AttributeError, KeyError):
            res = 224
        return model, res, "torchvision"
    if kind:
        raise ConfigError(f"unknown model source {kind!r} in {spec.name!r}; use timm:NAME or torchvision:NAME")
    cfg = preset(name, **{"num_classes": num_classes, **spec.overrides})
    model = build(cfg)
    if spec.fold_pn:
        from peffnet.fusion import fold_proxy_norm

        fold_proxy_norm(model.eval())
    return model, cfg.resolution, f"G{cfg.group_size} E{cfg.expansion} {cfg.norm}" + (" folded" if spec.fold_pn else "")


