"""The training run's configuration: every flag of ``peffnet train``, its default (the paper's recipe,
Section 3.4 and REFERENCE.md), its YAML form, validation, and resolution of the "auto" values.

Precedence: defaults < ``--config FILE.yaml`` < command-line flags. ``None`` means "auto": derived from
the model size, the dataset or the global batch by :func:`resolve`. The resolved configuration is what a
run saves (``DIR/config.yaml`` and the checkpoint) and what ``config_hash`` fingerprints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peffnet.data import DEFAULT_TRANSLATE, default_resolution, parse_spec
from peffnet.errors import ConfigError
from peffnet.models import ModelConfig, preset
from peffnet.resolution import check_resolution, half_resolution
from peffnet.training.mixing import CUTMIX_LAMBDA, MIXUP_ALPHA

LR_PER_SAMPLE = 2.0**-14
"""Paper Section 3.4: learning rate B * 2^-14 and RMSProp decay 1 - B * 2^-14 for global batch B."""

AMP_MODES = ("off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


def opt(default: Any, help: str, type: type = str, check: tuple[Any, str] | None = None,
        choices: tuple[str, ...] | None = None, execution: bool = False) -> Any:
    """A config field. ``check`` is (predicate, what it requires); ``execution`` marks settings that change
    how a run executes but not what it computes, so they may differ when a run is resumed."""
    return field(default=default, metadata={"help": help, "type": type, "check": check, "choices": choices,
                                            "execution": execution})


POSITIVE = (lambda v: v > 0, "a positive number")
NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
FRACTION = (lambda v: 0 <= v < 1, "a number in [0, 1)")
OPEN_UNIT = (lambda v: 0 < v < 1, "a number in (0, 1)")
UNIT = (lambda v: 0 < v <= 1, "a number in (0, 1]")


@dataclass
class TrainConfig:
    """Everything ``peffnet train`` takes. Field names are the YAML keys (``--batch-size`` = ``batch_size``)."""

    # what to train
    model: str = opt("g16_efficientnet_b0", "model name (see `peffnet models`)")
    group_size: int | None = opt(None, "group size G of the spatial convs (default: the preset's)", int, POSITIVE)
    expansion: int | None = opt(None, "expansion ratio E (default: the preset's)", int, POSITIVE)
    norm: str | None = opt(None, "normalization: bn, gn, ln, lnpn, gnpn (default: bn)")
    drop_rate: float | None = opt(None, "dropout before the classifier (default: the size's, 0.2 at B0)", float,
                                  FRACTION)
    drop_path_rate: float | None = opt(None, "stochastic depth rate at the last block (default 0.2: survival 0.8)",
                                       float, FRACTION)
    head_init_scale: float = opt(1.0, "multiplier of the classifier's initial weights (as timm's head_init_scale); "
                                      "the EfficientNet init U(+-1/sqrt(classes)) gives large logits for few "
                                      "classes", float, NON_NEGATIVE)
    data: str = opt("", "dataset: fashion-mnist, synthetic or imagefolder:PATH (train/CLASS/*, val/CLASS/*)")
    data_dir: str | None = opt(None, "where the dataset lives (fashion-mnist: folder of the idx files; "
                                     "imagefolder: base of a relative PATH)", execution=True)
    translate: int = opt(DEFAULT_TRANSLATE, "fashion-mnist/synthetic training augmentation: random shift by up to "
                                            "this many pixels (image folders: ignored)", int, NON_NEGATIVE)
    subset: int | None = opt(None, "train on a fixed random subset of this many images", int, POSITIVE)
    val_subset: int | None = opt(None, "evaluate on a fixed random subset of this many images", int, POSITIVE)
    out: str = opt("", "run directory (checkpoint, config, metrics, summary)", execution=True)
    # how long, how big
    epochs: int = opt(350, "training epochs", int, POSITIVE)
    batch_size: int = opt(768, "global batch size B (all processes and micro-batches together)", int, POSITIVE)
    micro_batch_size: int | None = opt(None, "images per forward/backward pass; gradients are accumulated up to "
                                             "the global batch (default: B / processes)", int, POSITIVE,
                                       execution=True)
    resolution: str | None = opt(None, "training resolution: native, half (paper Table 1) or pixels (default: "
                                       "32 for fashion-mnist/synthetic, native for image folders)")
    eval_resolution: int | None = opt(None, "evaluation resolution (default: the training resolution)", int)
    seed: int = opt(0, "random seed (weights, data order, augmentation, mixing, dropout)", int, NON_NEGATIVE)
    # optimizer and schedule
    lr: float | None = opt(None, "peak learning rate (default: lr_scale * B * 2^-14)", float, POSITIVE)
    lr_scale: float = opt(1.0, "multiplier of the default learning rate B * 2^-14", float, POSITIVE)
    rmsprop_decay: float | None = opt(None, "RMSProp decay rho (default: 1 - B * 2^-14)", float, OPEN_UNIT)
    momentum: float = opt(0.9, "RMSProp momentum", float, FRACTION)
    eps: float = opt(1e-3, "RMSProp epsilon (TensorFlow form, inside the square root)", float, POSITIVE)
    weight_decay: float = opt(1e-5, "L2 weight decay on conv/linear weights and PN's proxy parameters", float,
                              NON_NEGATIVE)
    warmup_epochs: float = opt(5.0, "linear warm-up length, in recipe epochs (see recipe_epochs)", float,
                               NON_NEGATIVE)
    decay_epochs: float = opt(2.4, "the lr is multiplied by decay_rate every this many recipe epochs", float,
                              POSITIVE)
    decay_rate: float = opt(0.97, "lr decay factor per decay period", float, UNIT)
    average_decay: float = opt(0.97, "decay of the exponential average of per-epoch weights (per recipe epoch); "
                                     "the average is the final model", float, FRACTION)
    recipe_epochs: float = opt(350.0, "run length the epoch-denominated settings above are written for; they "
                                      "are stretched to --epochs (0: take them literally)", float, NON_NEGATIVE)
    label_smoothing: float = opt(0.1, "label smoothing", float, FRACTION)
    mixup_alpha: float | None = opt(None, "Mixup Beta(alpha, alpha) strength, 0 = off (default: 0.1 for B0-B2, "
                                          "0.2 from B3)", float, NON_NEGATIVE)
    cutmix_lambda: float | None = opt(None, "fraction of each image CutMix keeps, 1 = off (default: 1 at B0, "
                                            "0.95 at B1 ... 0.8 at B5)", float, UNIT)
    # speed
    amp: str = opt("off", "mixed precision: off, bf16 (CPU or CUDA) or fp16 (CUDA, with loss scaling)",
                   choices=AMP_MODES)
    recompute: bool = opt(False, "recompute activations in the backward pass (less memory)", bool,
                          execution=True)
    channels_last: bool = opt(False, "NHWC memory format", bool, execution=True)
    compile: bool = opt(False, "torch.compile the model", bool, execution=True)
    device: str = opt("auto", "auto, cpu or cuda", choices=DEVICES, execution=True)
    workers: int | None = opt(None, "DataLoader workers per process for image folders (default: cores per "
                                    "process, at most 8)", int, NON_NEGATIVE, execution=True)
    eval_batch_size: int | None = opt(None, "images per evaluation batch and process (default: micro-batch "
                                            "size)", int, POSITIVE, execution=True)
    deterministic: bool = opt(False, "deterministic kernels (slower on CUDA)", bool, execution=True)
    # bookkeeping
    checkpoint_every: int = opt(0, "also write the checkpoint every this many steps (0: only every epoch)", int,
                                NON_NEGATIVE, execution=True)
    log_every: int = opt(1, "write step metrics every this many steps", int, POSITIVE, execution=True)
    resume: bool = opt(False, "continue the run in --out from its checkpoint", bool, execution=True)
    progress: bool = opt(True, "show a progress bar", bool, execution=True)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def coerce(name: str, value: Any) -> Any:
    """``value`` (from YAML or the command line) as the field's type; a one-line error otherwise."""
    meta = FIELDS[name].metadata
    if value is None:
        return None
    kind = meta["type"]
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                value = value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
        elif kind is int:
            if isinstance(value, (bool, float)):
                raise ValueError
            value = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        else:
            if isinstance(value, (dict, list)):
                raise ValueError
            value = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {'a' if kind is not int else 'an'} {kind.__name__}, got {value!r}") from None
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    check = meta["check"]
    if check and not check[0](value):
        raise ConfigError(f"{name} must be {check[1]}, got {value!r}")
    return value


def read_yaml(path: str) -> dict[str, Any]:
    """The settings of a YAML config file (keys as field names; dashes allowed)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} must be a mapping of settings, got {type(loaded).__name__}")
    settings = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config {path} has unknown setting(s): {', '.join(unknown)}")
    return settings


def make_config(*layers: dict[str, Any]) -> TrainConfig:
    """Defaults overridden by each layer of settings in turn (``None`` values are skipped), validated."""
    values = {name: f.default for name, f in FIELDS.items()}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if v is not None})
    return TrainConfig(**{name: coerce(name, v) for name, v in values.items()})


@dataclass(frozen=True)
class Resolved:
    """A run's configuration with every "auto" value filled in, plus the model it builds."""

    config: TrainConfig
    model: ModelConfig
    num_classes: int
    in_chans: int

    @property
    def time_scale(self) -> float:
        """Recipe epochs -> run epochs: ``epochs / recipe_epochs`` (1 when ``recipe_epochs`` is 0)."""
        c = self.config
        return c.epochs / c.recipe_epochs if c.recipe_epochs else 1.0

    @property
    def average_decay_per_epoch(self) -> float:
        """``average_decay`` per recipe epoch, as a per-run-epoch decay (same averaging window, in time)."""
        return self.config.average_decay ** (1.0 / self.time_scale)


def resolve(cfg: TrainConfig, world_size: int, num_classes: int, in_chans: int) -> Resolved:
    """Fill in the "auto" values for a dataset of ``num_classes``/``in_chans`` run on ``world_size``
    processes; one-line errors for impossible combinations."""
    if not cfg.out:
        raise ConfigError("--out is required: the run directory")
    parse_spec(cfg.data)
    model = preset(cfg.model, group_size=cfg.group_size, expansion=cfg.expansion, norm=cfg.norm,
                   drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate, num_classes=num_classes,
                   in_chans=in_chans)
    B = cfg.batch_size
    if B % world_size:
        raise ConfigError(f"global batch {B} is not divisible by the {world_size} processes")
    micro = cfg.micro_batch_size or B // world_size
    if B % (micro * world_size):
        raise ConfigError(f"global batch {B} cannot be split into micro-batches of {micro} on {world_size} "
                          f"process(es): it must be a multiple of micro-batch x processes ({micro * world_size})")
    decay = cfg.rmsprop_decay if cfg.rmsprop_decay is not None else 1 - B * LR_PER_SAMPLE
    if not 0 < decay < 1:
        raise ConfigError(f"the default RMSProp decay 1 - B * 2^-14 is {decay:g} for batch {B}; set --rmsprop-decay")
    resolution = resolve_resolution(cfg.resolution, cfg.data, model.resolution)
    eval_resolution = check_resolution(cfg.eval_resolution or resolution, "eval_resolution")
    config = dataclasses.replace(
        cfg, group_size=model.group_size, expansion=model.expansion, norm=model.norm, drop_rate=model.drop_rate,
        drop_path_rate=model.drop_path_rate, micro_batch_size=micro,
        lr=cfg.lr if cfg.lr is not None else cfg.lr_scale * B * LR_PER_SAMPLE, rmsprop_decay=decay,
        resolution=str(resolution), eval_resolution=eval_resolution,
        mixup_alpha=MIXUP_ALPHA[model.size] if cfg.mixup_alpha is None else cfg.mixup_alpha,
        cutmix_lambda=CUTMIX_LAMBDA[model.size] if cfg.cutmix_lambda is None else cfg.cutmix_lambda,
        eval_batch_size=cfg.eval_batch_size or micro)
    return Resolved(config, model, num_classes, in_chans)


def resolve_resolution(value: str | None, spec: str, native: int) -> int:
    """``native``, ``half`` (paper Table 1 / the half-resolution rule), pixels, or the dataset default."""
    if value is None:
        value = default_resolution(spec) or "native"
    if value == "native":
        return native
    if value == "half":
        return half_resolution(native)
    try:
        pixels = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"resolution must be native, half or a number of pixels, got {value!r}") from None
    return check_resolution(pixels, "resolution")


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The configuration as a plain dict (YAML/JSON/checkpoint-safe)."""
    return dataclasses.asdict(cfg)


def config_hash(cfg: TrainConfig) -> str:
    """Fingerprint of what a run computes (execution-only settings left out): 12 hex digits."""
    keep = {k: v for k, v in config_dict(cfg).items() if not FIELDS[k].metadata["execution"]}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


def check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """A one-line error when the checkpoint's run differs from this one in anything but execution settings."""
    for name, value in config_dict(cfg).items():
        before = saved.get(name, FIELDS[name].default)  # a setting added since the checkpoint: its default
        if not FIELDS[name].metadata["execution"] and before != value:
            raise ConfigError(f"the checkpoint was trained with {name}={before!r}, this run has "
                              f"{value!r}; resume with the same settings or use another --out")
