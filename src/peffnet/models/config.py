"""Block and model configurations of the G-EfficientNet family, as data.

The base network is EfficientNet B0 (Tan & Le, 2019); sizes B1-B7 scale its width, depth and
resolution. The paper (Section 3.1) generalises every depthwise (spatial) convolution of the MBConv
blocks to a grouped convolution of group size ``G`` and lowers the expansion ratio ``E`` to keep the
cost similar: G1/E6 is vanilla, G4/E5 and G16/E4 are the paper's presets (Table 2). Facts the paper
leaves open are taken from the authors' code, see docs/reference.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from peffnet.errors import ConfigError
from peffnet.settings import FLOAT, FRACTION, INT, NON_NEGATIVE, POSITIVE, Check, Settings, require, setting

NORMS = ("bn", "gn", "ln", "lnpn", "gnpn")
DEFAULT_NORM = "bn"
"""The norm of a preset name without a norm suffix (``g16_efficientnet_b0`` is ``g16_efficientnet_b0_bn``)."""
GLOBAL_POOLS = ("avg", "max", "avgmax", "catavgmax", "")
"""timm's global pooling types a model accepts (``''``: no pooling, for ``num_classes=0`` only)."""
MIN_RESOLUTION = 32
"""Smallest input that survives the five stride-2 layers with at least one pixel."""
RESOLUTION = Check(lambda v: v >= MIN_RESOLUTION, f"at least {MIN_RESOLUTION} (five stride-2 layers)")


@dataclass(frozen=True)
class StageConfig:
    """One MBConv stage of EfficientNet-B0, before width/depth scaling."""

    kernel: int
    stride: int
    expand: bool  # False only for stage 1, which keeps E=1 whatever the model's expansion
    out_channels: int
    repeats: int


# Tan & Le (2019), Table 1: (kernel, stride, expands, channels, repeats) of the B0 stages.
B0_STAGES: tuple[StageConfig, ...] = (
    StageConfig(3, 1, False, 16, 1),
    StageConfig(3, 2, True, 24, 2),
    StageConfig(5, 2, True, 40, 2),
    StageConfig(3, 2, True, 80, 3),
    StageConfig(5, 1, True, 112, 3),
    StageConfig(5, 2, True, 192, 4),
    StageConfig(3, 1, True, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
SE_RATIO = 0.25  # of the block *input* width, so SE width does not change with E


@dataclass(frozen=True)
class SizeConfig:
    """Compound-scaling coefficients of one EfficientNet size."""

    width: float
    depth: float
    resolution: int
    drop_rate: float


SIZES: dict[str, SizeConfig] = {
    "b0": SizeConfig(1.0, 1.0, 224, 0.2),
    "b1": SizeConfig(1.0, 1.1, 240, 0.2),
    "b2": SizeConfig(1.1, 1.2, 260, 0.3),
    "b3": SizeConfig(1.2, 1.4, 300, 0.3),
    "b4": SizeConfig(1.4, 1.8, 380, 0.4),
    "b5": SizeConfig(1.6, 2.2, 456, 0.4),
    "b6": SizeConfig(1.8, 2.6, 528, 0.5),
    "b7": SizeConfig(2.0, 3.1, 600, 0.5),
}

# Paper presets: name prefix -> (group size, expansion ratio). Table 2 / Section 4.1.
PRESETS: dict[str, tuple[int, int]] = {
    "": (1, 6),  # vanilla EfficientNet: depthwise, E=6
    "g4_": (4, 5),
    "g16_": (16, 4),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything the builder needs to make one network."""

    name: str
    size: str
    width: float
    depth: float
    resolution: int
    group_size: int = 1
    expansion: int = 6
    norm: str = DEFAULT_NORM
    num_classes: int = 1000  # 0: no classifier, the model returns its pooled features
    in_chans: int = 3
    drop_rate: float = 0.2
    drop_path_rate: float = 0.2  # stochastic depth; survival 0.8 at the last block (docs/reference.md)
    global_pool: str = "avg"

    def __post_init__(self) -> None:
        for field in ("group_size", "expansion", "in_chans"):
            require(field, getattr(self, field), INT, POSITIVE)
        require("num_classes", self.num_classes, INT, NON_NEGATIVE)
        require("resolution", self.resolution, INT, RESOLUTION)
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ConfigError(f"unknown global_pool {self.global_pool!r}; choose one of "
                              f"{', '.join(map(repr, GLOBAL_POOLS))}")
        if not self.global_pool and self.num_classes:
            raise ConfigError("global_pool='' (no pooling) needs num_classes=0: a classifier takes pooled features")
        for field in ("drop_rate", "drop_path_rate"):
            require(field, getattr(self, field), FLOAT, FRACTION)


@dataclass
class ModelOverrides(Settings):
    """The builder overrides every command that builds a preset accepts (``--group-size``, ``--expansion``,
    ``--norm``); ``None`` keeps the preset's value."""

    group_size: int | None = setting(None, "group size G of the spatial convs (default: the preset's)", INT, POSITIVE,
                                     group="model")
    expansion: int | None = setting(None, "expansion ratio E (default: the preset's)", INT, POSITIVE, group="model")
    norm: str | None = setting(None, f"normalization: {', '.join(NORMS)} (default: the name's suffix, else "
                                     f"{DEFAULT_NORM})", group="model")

    def overrides(self) -> dict[str, Any]:
        """The overrides that were set, for :func:`preset`."""
        return {k: getattr(self, k) for k in ("group_size", "expansion", "norm") if getattr(self, k) is not None}


def model_names(with_norms: bool = False) -> list[str]:
    """All preset names, e.g. ``efficientnet_b0``, ``g4_efficientnet_b3``, ``g16_efficientnet_b7``; with
    ``with_norms``, each followed by its names with a norm suffix (``g16_efficientnet_b0_lnpn``)."""
    names = [f"{prefix}efficientnet_{size}" for prefix in PRESETS for size in SIZES]
    return [n for name in names for n in [name, *(f"{name}_{norm}" for norm in NORMS)]] if with_norms else names


def split_norm(name: str) -> tuple[str, str | None]:
    """``("g16_efficientnet_b0", "lnpn")`` for ``g16_efficientnet_b0_lnpn``; a name without a norm suffix
    comes back with ``None``."""
    base, _, suffix = name.rpartition("_")
    return (base, suffix) if base and suffix in NORMS else (name, None)


def preset(name: str, **overrides: object) -> ModelConfig:
    """The configuration of a preset name (optionally with a norm suffix: ``g16_efficientnet_b0_lnpn``) with
    user overrides applied. Without a suffix or a ``norm`` override the norm is :data:`DEFAULT_NORM`.

    Raises:
        ConfigError: unknown name, unknown override, an invalid value, or a ``norm`` that contradicts the name.
    """
    bare, name_norm = split_norm(name)
    if name_norm is not None and overrides.get("norm") not in (None, name_norm):
        raise ConfigError(f"{name} is the {name_norm} model; norm={overrides['norm']!r} contradicts it (use "
                          f"{bare}_{overrides['norm']})")
    for prefix, (group_size, expansion) in PRESETS.items():
        stem = bare.removeprefix(prefix) if prefix else bare
        if (prefix == "" or bare.startswith(prefix)) and stem.startswith("efficientnet_"):
            size_key = stem.removeprefix("efficientnet_")
            if size_key in SIZES:
                size = SIZES[size_key]
                base = ModelConfig(
                    name=name, size=size_key, width=size.width, depth=size.depth,
                    resolution=size.resolution, group_size=group_size, expansion=expansion,
                    norm=name_norm or DEFAULT_NORM, drop_rate=size.drop_rate,
                )
                break
    else:
        raise ConfigError(f"unknown model {name!r}; run `peffnet models` for the list")
    allowed = {"group_size", "expansion", "norm", "num_classes", "in_chans", "drop_rate",
               "drop_path_rate", "resolution", "global_pool"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(f"unknown model override(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    clean = {k: v for k, v in overrides.items() if v is not None}
    return replace(base, **clean)  # type: ignore[arg-type]


def data_config(cfg: ModelConfig) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` of a configuration, without weights (no ``url``): the native input size (and
    the smallest one, :data:`MIN_RESOLUTION`), the preprocessing ``peffnet eval`` gives image folders (resize
    the short side to ``r * 256 / 224``, bilinear, centre-crop ``r``, ImageNet mean and std), the pooled map
    size, the first conv and the classifier. For ``in_chans`` other than 3 the mean and std are ImageNet's
    averaged over its three channels, one value per channel."""
    res, side, chans = cfg.resolution, math.ceil(cfg.resolution / 32), cfg.in_chans
    mean, std = ((IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if chans == 3 else
                 ((sum(IMAGENET_DEFAULT_MEAN) / 3,) * chans, (sum(IMAGENET_DEFAULT_STD) / 3,) * chans))
    return {"num_classes": cfg.num_classes, "input_size": (chans, res, res),
            "min_input_size": (chans, MIN_RESOLUTION, MIN_RESOLUTION), "pool_size": (side, side), "crop_pct": 224 / 256,
            "crop_mode": "center", "interpolation": "bilinear", "mean": mean, "std": std, "first_conv": "stem.conv",
            "classifier": "classifier", "paper_name": "Making EfficientNet More Efficient", "license": "apache-2.0"}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor``, never dropping more than 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by the depth coefficient, rounding up (Tan & Le, 2019)."""
    return int(math.ceil(repeats * depth))


def nearest_group_size(channels: int, group_size: int) -> int:
    """The divisor of ``channels`` nearest to the requested group size (paper, Section 3.1, footnote 2).

    "Nearest" is measured as a ratio (``|log(d / G)|``), the natural distance between group sizes that
    double from row to row of Table 2: for 624 channels and G=32 it picks 39 (x1.22) over 26 (x0.81).
    This reproduces every G1/G4/G16 parameter count of Table 2 and also B2-G32's 10.3M, which the linear
    distance misses (docs/models.md). Ties cannot happen: two divisors equally far in ratio satisfy
    ``d1 * d2 = G**2``, and then ``G`` itself divides ``channels``. (Were the loop to meet one, ``<=``
    keeps the larger divisor: longer dot products, higher arithmetic intensity, Appendix A.)
    A group size above ``channels`` becomes ``channels`` (a dense convolution).
    """
    best = 1
    for d in range(1, channels + 1):
        if channels % d == 0 and abs(math.log(d / group_size)) <= abs(math.log(best / group_size)):
            best = d
    return best
