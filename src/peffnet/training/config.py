"""``peffnet train``'s settings: every flag, its default (the paper's recipe, Section 3.4 and docs/reference.md),
and the resolution of the "auto" values once the dataset and the number of processes are known.

Precedence: defaults < ``--config FILE.yaml`` < command-line flags (:mod:`peffnet.settings`). The resolved
configuration is what a run saves (``DIR/config.yaml`` and the checkpoint) and what ``config_hash``
fingerprints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from peffnet.data import AUGMENTS, DECODE_MODES, DEFAULT_TRANSLATE, default_resolution, in_memory
from peffnet.errors import ConfigError
from peffnet.models import ModelConfig, ModelOverrides, preset
from peffnet.models.config import split_norm
from peffnet.resolution import check_resolution, half_resolution
from peffnet.runtime.mixing import CUTMIX_LAMBDA, MIXUP_ALPHA
from peffnet.runtime.optim import OPTIMIZERS
from peffnet.settings import (
    BOOL,
    FLOAT,
    FRACTION,
    INT,
    NON_NEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    UNIT,
    Settings,
    setting,
)
from peffnet.training.distributed import DEFAULT_TIMEOUT_S
from peffnet.training.rundir import RESUME, RESUME_MODES

LR_PER_SAMPLE = 2.0**-14
"""Paper Section 3.4: learning rate B * 2^-14 and RMSProp decay 1 - B * 2^-14 for global batch B."""

AMP_MODES = ("off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class RunSettings(Settings):
    """What a run directory's bookkeeping needs, in training and fine-tuning alike: checkpoints, logs, resume.
    ``--help`` lists these flags after those of the class that inherits them."""

    trailing: ClassVar[bool] = True
    checkpoint_every: int = setting(0, "also write the checkpoint every this many steps (0: only every epoch)", INT,
                                    NON_NEGATIVE, execution=True, group="run")
    keep_checkpoints: int = setting(2, "checkpoints kept: checkpoint.pt and the ones before it", INT, POSITIVE,
                                    execution=True, group="run")
    log_every: int = setting(1, "write step metrics every this many steps", INT, POSITIVE, execution=True,
                             group="run")
    resume: str = setting("auto", "auto: continue the run in --out when it holds a checkpoint, else start; "
                                  "yes (--resume alone): continue, or fail; no: start, or fail", RESUME,
                          choices=RESUME_MODES, execution=True, group="run", const="yes")
    dist_timeout: float = setting(DEFAULT_TIMEOUT_S, "seconds a process waits for the others under torchrun "
                                                     "(joining, every collective)", FLOAT, POSITIVE, execution=True,
                                  group="run")
    progress: bool = setting(True, "show a progress bar", BOOL, execution=True, group="run")


@dataclass
class TrainConfig(ModelOverrides, RunSettings):
    """Everything ``peffnet train`` takes. Field names are the YAML keys (``--batch-size`` = ``batch_size``)."""

    # what to train (and group_size, expansion, norm)
    model: str = setting("g16_efficientnet_b0_lnpn", "model name (see `peffnet models`); the default is the "
                                                     "paper's flagship, G16 with LN+PN", group="model")
    drop_rate: float | None = setting(None, "dropout before the classifier (default: the size's, 0.2 at B0; 0 on "
                                            "small datasets)", FLOAT, FRACTION, group="model")
    drop_path_rate: float | None = setting(None, "stochastic depth rate at the last block (default 0.2: survival "
                                                 "0.8; 0 on small datasets)", FLOAT, FRACTION, group="model")
    head_init_scale: float | None = setting(None, "multiplier of the classifier's initial weights (as timm's "
                                                  "head_init_scale; default 1, 0 on small datasets: the EfficientNet "
                                                  "init gives large logits for few classes)", FLOAT, NON_NEGATIVE,
                                            group="model")
    # data
    data: str = setting("", "dataset: fashion-mnist, synthetic, imagefolder:PATH (train/CLASS/*, val/CLASS/*) or "
                                "shards:DIR (peffnet data pack)",
                        group="data")
    data_dir: str | None = setting(None, "where the dataset lives (fashion-mnist: folder of the idx files; "
                                         "imagefolder: base of a relative PATH)", execution=True, group="data")
    translate: int | None = setting(None, "fashion-mnist/synthetic training augmentation: random shift by up to "
                                          "this many pixels (default 2; image folders and shards: with --augment "
                                          "shift, default 4)", INT, NON_NEGATIVE, group="data")
    augment: str = setting("crop", "image folders and shards: crop (the paper's random-resized crop and flip; "
                                   "validation: resize to r * 256/224, centre crop) or shift (small images such as "
                                   "Fashion-MNIST as files: shifted by up to --translate pixels and flipped; "
                                   "validation: the image resized)", choices=AUGMENTS, group="data")
    subset: int | None = setting(None, "train on a fixed random subset of this many images", INT, POSITIVE,
                                 group="data")
    val_subset: int | None = setting(None, "evaluate on a fixed random subset of this many images", INT, POSITIVE,
                                     group="data")
    resolution: str | None = setting(None, "training resolution: native, half (paper Table 1) or pixels (default: "
                                           "32 for fashion-mnist/synthetic, native for image folders)", group="data")
    eval_resolution: int | None = setting(None, "evaluation resolution (default: the training resolution)", INT,
                                          group="data")
    max_image_pixels: int | None = setting(None, "image files with more pixels are skipped unread, and counted "
                                                 "(default: PIL's Image.MAX_IMAGE_PIXELS)", INT, POSITIVE,
                                           group="data")
    out: str = setting("", "run directory (checkpoint, config, metrics, summary)", execution=True, group="run")
    # schedule and optimizer
    epochs: int = setting(350, "training epochs (may grow when a run is resumed, with --recipe-epochs 0)", INT,
                          POSITIVE, resumable=True, group="schedule")
    batch_size: int | None = setting(None, "global batch size B, all processes and micro-batches together "
                                           "(default: 768, the paper's; 256 on small datasets)", INT, POSITIVE,
                                     group="schedule")
    micro_batch_size: int | None = setting(None, "images per forward/backward pass; gradients are accumulated up to "
                                                 "the global batch (default: B / processes)", INT, POSITIVE,
                                           execution=True, group="speed")
    seed: int = setting(0, "random seed (weights, data order, augmentation, mixing, dropout)", INT, NON_NEGATIVE,
                        group="schedule")
    lr: float | None = setting(None, "peak learning rate (default: lr_scale * B * 2^-14; a new value on resume "
                                     "scales the rest of the schedule)", FLOAT, POSITIVE, resumable=True,
                               group="schedule")
    lr_scale: float | None = setting(None, "multiplier of the default learning rate B * 2^-14 (default 1; 0.25 "
                                           "on small datasets, where the full rate diverges)", FLOAT, POSITIVE,
                              resumable=True, group="schedule")
    rmsprop_decay: float | None = setting(None, "RMSProp decay rho (default: 1 - B * 2^-14)", FLOAT, OPEN_UNIT,
                                          group="schedule")
    optimizer: str | None = setting(None, "rmsprop_tf (the paper's) or adam (default: rmsprop_tf; adam for BN "
                                          "models on small datasets: docs/training.md)", choices=OPTIMIZERS,
                                    group="schedule")
    momentum: float = setting(0.9, "RMSProp momentum", FLOAT, FRACTION, group="schedule")
    eps: float = setting(1e-3, "RMSProp epsilon (TensorFlow form, inside the square root)", FLOAT, POSITIVE,
                         group="schedule")
    weight_decay: float = setting(1e-5, "L2 weight decay on conv/linear weights and PN's proxy parameters", FLOAT,
                                  NON_NEGATIVE, group="schedule")
    warmup_epochs: float = setting(5.0, "linear warm-up length, in recipe epochs (see recipe_epochs)", FLOAT,
                                   NON_NEGATIVE, group="schedule")
    decay_epochs: float = setting(2.4, "the lr is multiplied by decay_rate every this many recipe epochs", FLOAT,
                                  POSITIVE, group="schedule")
    decay_rate: float = setting(0.97, "lr decay factor per decay period", FLOAT, UNIT, group="schedule")
    average_decay: float = setting(0.97, "decay of the exponential average of per-epoch weights (per recipe "
                                         "epoch); the average is the final model", FLOAT, FRACTION, group="schedule")
    recipe_epochs: float = setting(350.0, "run length the epoch-denominated settings above are written for; they "
                                          "are stretched to --epochs (0: take them literally)", FLOAT, NON_NEGATIVE,
                                   group="schedule")
    label_smoothing: float = setting(0.1, "label smoothing", FLOAT, FRACTION, group="schedule")
    mixup_alpha: float | None = setting(None, "Mixup Beta(alpha, alpha) strength, 0 = off (default: 0.1 for B0-B2, "
                                              "0.2 from B3; 0 on small datasets)", FLOAT, NON_NEGATIVE,
                                        group="schedule")
    cutmix_lambda: float | None = setting(None, "fraction of each image CutMix keeps, 1 = off (default: 1 at B0, "
                                                "0.95 at B1 ... 0.8 at B5)", FLOAT, UNIT, group="schedule")
    # speed
    amp: str = setting("off", "mixed precision: bf16 (CPU or CUDA) or fp16 (CUDA, with loss scaling)",
                       choices=AMP_MODES, group="speed")
    recompute: bool = setting(False, "recompute activations in the backward pass (less memory)", BOOL,
                              execution=True, group="speed")
    channels_last: bool | None = setting(None, "NHWC memory format (default: the layout the norm trains fastest "
                                               "in on the device: channels_last on CUDA for BN, LN and LN+PN, NCHW "
                                               "for GN and on a CPU)", BOOL, execution=True, group="speed")
    compile: bool = setting(False, "torch.compile the model (trains the plain form: the compiler fuses)", BOOL,
                            execution=True, group="speed")
    device: str = setting("auto", "where to train", choices=DEVICES, execution=True, group="speed")
    workers: int | None = setting(None, "DataLoader workers per process for image folders (default: cores per "
                                        "process, at most 8)", INT, NON_NEGATIVE, execution=True, group="speed")
    decode: str = setting("auto", "where JPEGs are decoded: cpu (DataLoader workers), device (nvJPEG on the GPU) or "
                                  "auto (the faster, measured when the run starts; cpu without a GPU)",
                          choices=DECODE_MODES, execution=True, group="speed")
    eval_batch_size: int | None = setting(None, "images per evaluation batch and process (default: micro-batch "
                                                "size)", INT, POSITIVE, execution=True, group="speed")
    deterministic: bool = setting(False, "deterministic kernels (slower on CUDA)", BOOL, execution=True,
                                  group="speed")


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


def split_batch(batch: int, micro: int | None, world_size: int) -> int:
    """The micro-batch size of a global ``batch`` on ``world_size`` processes (default: one per process);
    one-line errors when the split is impossible."""
    if batch % world_size:
        raise ConfigError(f"global batch {batch} is not divisible by the {world_size} processes")
    micro = micro or batch // world_size
    if batch % (micro * world_size):
        raise ConfigError(f"global batch {batch} cannot be split into micro-batches of {micro} on {world_size} "
                          f"process(es): it must be a multiple of micro-batch x processes ({micro * world_size})")
    return micro


PAPER_DEFAULTS = {"batch_size": 768, "lr_scale": 1.0, "head_init_scale": 1.0, "translate": DEFAULT_TRANSLATE}
"""The "auto" values for image folders: the paper's ImageNet recipe (Section 3.4)."""
SMALL_DATA_DEFAULTS = {"batch_size": 256, "lr_scale": 0.25, "head_init_scale": 0.0, "translate": 2,
                       "drop_rate": 0.0, "drop_path_rate": 0.0, "mixup_alpha": 0.0}
"""The "auto" values for the 28/32 px in-memory datasets (fashion-mnist, synthetic): those of
``configs/fashion_mnist.yaml``, which reached 92.3 % in 25 epochs (docs/training.md). With the paper's
ImageNet settings a short run diverges (lr B * 2^-14 and half of it) or underfits (dropout, stochastic depth
and Mixup are regularizers for 350 epochs; the EfficientNet classifier init gives 10-class logits of std ~5)."""


SMALL_DATA_OPTIMIZER = {"bn": "adam"}
"""The optimizer of a normalization on the small datasets, where runs are a few hundred steps; the others, and
every model on image folders, get the paper's ``rmsprop_tf``. BN models do not train with it in such runs (the
study's 2 epochs: 26-35 % top-1) and do with Adam (80 % after one epoch); GN and LN+PN train with it, and
their half-resolution fine-tuning goes better from its weights than from Adam's (docs/training.md, "Short runs
and BatchNorm")."""


def default_optimizer(spec: str, norm: str) -> str:
    """The optimizer of a run that does not name one: :data:`SMALL_DATA_OPTIMIZER` on the small datasets."""
    return SMALL_DATA_OPTIMIZER.get(norm, "rmsprop_tf") if in_memory(spec) else "rmsprop_tf"


def with_dataset_defaults(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its "auto" values that depend on the dataset filled in (:data:`SMALL_DATA_DEFAULTS` for
    fashion-mnist/synthetic, :data:`PAPER_DEFAULTS` for image folders); settings given stay as given."""
    small = in_memory(cfg.data)
    defaults = SMALL_DATA_DEFAULTS if small else PAPER_DEFAULTS
    return dataclasses.replace(cfg, **{k: v for k, v in defaults.items() if getattr(cfg, k) is None})


def resolve(cfg: TrainConfig, world_size: int, num_classes: int, in_chans: int) -> Resolved:
    """Fill in the "auto" values for a dataset of ``num_classes``/``in_chans`` run on ``world_size``
    processes; one-line errors for impossible combinations."""
    if not cfg.out:
        raise ConfigError("--out is required: the run directory")
    cfg = with_dataset_defaults(cfg)
    name = cfg.model
    if name == TrainConfig.default("model") and cfg.norm is not None:  # --norm picks the flagship's norm
        name = split_norm(name)[0]
    model = preset(name, group_size=cfg.group_size, expansion=cfg.expansion, norm=cfg.norm,
                   drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate, num_classes=num_classes,
                   in_chans=in_chans)
    B = cfg.batch_size
    micro = split_batch(B, cfg.micro_batch_size, world_size)
    decay = cfg.rmsprop_decay if cfg.rmsprop_decay is not None else 1 - B * LR_PER_SAMPLE
    if not 0 < decay < 1:
        raise ConfigError(f"the default RMSProp decay 1 - B * 2^-14 is {decay:g} for batch {B}; set --rmsprop-decay")
    resolution = resolve_resolution(cfg.resolution, cfg.data, model.resolution)
    eval_resolution = check_resolution(cfg.eval_resolution or resolution, "eval_resolution")
    config = dataclasses.replace(
        cfg, model=model.name, group_size=model.group_size, expansion=model.expansion, norm=model.norm,
        drop_rate=model.drop_rate,
        drop_path_rate=model.drop_path_rate, micro_batch_size=micro,
        optimizer=cfg.optimizer or default_optimizer(cfg.data, model.norm),
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
