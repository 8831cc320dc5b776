"""``peffnet study``'s settings and its grid (paper Figure 1: group size x normalization x resolution regime).

A configuration is a group size (G1 with E6, G4 with E5, G16 with E4: the paper's presets, Table 2), a
normalization and a regime: ``native`` trains at the native resolution, ``half`` trains at half resolution
and fine-tunes at native (Sections 3.3-3.4). Every configuration gets the same epoch budget. A study
directory may be extended in pieces (more seeds, more configurations); the settings that change what a run
computes must stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from peffnet.data import in_memory, parse_spec
from peffnet.errors import ConfigError
from peffnet.models.config import NORMS, PRESETS, SIZES, preset
from peffnet.resolution import RESOLUTION, half_resolution
from peffnet.settings import BOOL, FLOAT, FLOATS, INT, INTS, NON_NEGATIVE, POSITIVE, TEXTS, Check, Settings, setting
from peffnet.training.config import DEVICES

PRESET_EXPANSION = {g: e for g, e in PRESETS.values()}  # group size -> expansion: {1: 6, 4: 5, 16: 4}
GROUPS = Check(lambda g: g in PRESET_EXPANSION, "1, 4 or 16 (the paper's presets G1 E6, G4 E5, G16 E4)")
REGIMES = ("native", "half")
SMALL_IMAGE_NATIVE = 64
"""The "native" size of the 28/32 px datasets (as ``peffnet recipe``): half = 32, the canvas itself."""
NORM_LABELS = {"bn": "BN", "gn": "GN", "ln": "LN", "lnpn": "LN+PN", "gnpn": "GN+PN"}


@dataclass
class StudyConfig(Settings):
    """Everything ``peffnet study`` takes."""

    data: str = setting("", "dataset: fashion-mnist, synthetic, imagefolder:PATH or shards:DIR", required=True)
    out: str | None = setting(None, "study directory (runs/, speed.json, study.json, study.md, figures)",
                              execution=True, required=True)
    groups: list[int] = setting((1, 16), "group sizes (comma-separated): 1 (E6), 4 (E5), 16 (E4)", INTS, GROUPS,
                                group="grid")
    norms: list[str] = setting(("gn", "lnpn", "bn"), f"normalizations: {', '.join(NORMS)}", TEXTS,
                               choices=NORMS, group="grid")
    regimes: list[str] = setting(REGIMES, "native (train at native) and/or half (train at half resolution, "
                                          "fine-tune at native)", TEXTS, choices=REGIMES, group="grid")
    seeds: list[int] = setting((0,), "random seeds", INTS, NON_NEGATIVE, group="grid")
    size: str = setting("b0", "EfficientNet size", choices=tuple(SIZES), group="recipe")
    resolution: int | None = setting(None, "native resolution (default: 64 for fashion-mnist/synthetic, else the "
                                           "model's)", INT, RESOLUTION, group="recipe")
    epochs: int = setting(2, "training epochs of every configuration", INT, POSITIVE, group="recipe")
    batch_size: int = setting(128, "global training batch", INT, POSITIVE, group="recipe")
    subset: int | None = setting(None, "train on a fixed random subset of this many images", INT, POSITIVE,
                                 group="recipe")
    val_subset: int | None = setting(2000, "validation images of the per-epoch evaluations", INT, POSITIVE,
                                     group="recipe")
    test_subset: int | None = setting(None, "validation images of the final evaluation (default: all)", INT,
                                      POSITIVE, group="recipe")
    finetune_epochs: int = setting(1, "fine-tuning epochs of the half regime", INT, POSITIVE, group="recipe")
    finetune_subset: int | None = setting(10000, "fine-tuning images", INT, POSITIVE, group="recipe")
    finetune_lr: float | None = setting(None, "fine-tuning lr (default: 0.05 for fashion-mnist/synthetic, else "
                                              "0.25 x batch / 512)", FLOAT, POSITIVE, group="recipe")
    train_config: str | None = setting(None, "YAML of `peffnet train` settings for every run (over "
                                             "`peffnet train`'s defaults for the dataset)", group="recipe")
    targets: list[float] | None = setting(None, "top-1 targets (%) for the time-to-accuracy table (default: "
                                                "from 70 to the best accuracy reached, in steps of 5, and 88, 90, "
                                                "92 where reached)", FLOATS, POSITIVE, group="report")
    tune: bool = setting(True, "try NCHW/channels_last and fp32/bf16 for every configuration and run it with the "
                               "fastest", BOOL, execution=True, group="speed")
    repeats: int = setting(5, "rounds of the alternating speed benchmark", INT, POSITIVE, execution=True,
                           group="speed")
    device: str = setting("auto", "where to run", choices=DEVICES, execution=True, group="speed")
    threads: int | None = setting(None, "torch CPU threads (default: torch's)", INT, POSITIVE, execution=True,
                                  group="speed")
    progress: bool = setting(True, "show progress bars", BOOL, execution=True, group="speed")

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_spec(self.data)
        for axis in ("groups", "norms", "regimes", "seeds"):
            if not getattr(self, axis):
                raise ConfigError(f"the grid is empty: give at least one value of {axis}")

    @property
    def small(self) -> bool:
        """A 28/32 px in-memory dataset (fashion-mnist, synthetic) rather than image folders."""
        return in_memory(self.data)

    def native(self) -> int:
        return self.resolution or (SMALL_IMAGE_NATIVE if self.small else preset(self.model_name(1)).resolution)

    def model_name(self, group_size: int) -> str:
        prefix = next(p for p, (g, _) in PRESETS.items() if g == group_size)
        return f"{prefix}efficientnet_{self.size}"

    def grid(self) -> list[Cell]:
        """Every configuration of the grid, in a stable order."""
        return [Cell(g, n, r) for g in self.groups for n in self.norms for r in self.regimes]

    def recipe(self) -> dict:
        """The settings that change what the study's runs compute (the grid axes left out: a study may grow)."""
        grid_axes = {"groups", "norms", "regimes", "seeds", "targets"}
        return {k: v for k, v in self.computed().items() if k not in grid_axes}


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid."""

    group_size: int
    norm: str
    regime: str

    @property
    def expansion(self) -> int:
        return PRESET_EXPANSION[self.group_size]

    @property
    def label(self) -> str:
        """G-M-R as the paper labels its series: ``G16-LN+PN-Half``."""
        return f"G{self.group_size}-{NORM_LABELS[self.norm]}-{self.regime.capitalize()}"

    @property
    def key(self) -> str:
        """A file-name-safe form of the label: ``g16-lnpn-half``."""
        return f"g{self.group_size}-{self.norm}-{self.regime}"

    def train_resolution(self, native: int) -> int:
        return half_resolution(native) if self.regime == "half" else native
