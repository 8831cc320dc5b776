"""Fine-tuning the last parts of a network at a higher resolution (paper Section 3.4, "For fine-tuning").

The paper fine-tunes one of three depths, "to keep the proportion of layers that are fine-tuned
approximately independent of the model size":

1. the *last block*: the final 1x1 convolution, its normalization and the fully connected layer
   (``model.head`` + ``model.classifier``);
2. the *last two blocks*: also "all weights up to and including the previous downsampling layer",
   i.e. back to the last stride-2 stage (stage 6 of 7): stages 6-7;
3. the *last three blocks*: back "one further downsampling layer" (stage 4): stages 4-7.

The stride-2 stages are read from the stage table, not hard-coded. Frozen parts are pinned in eval
mode, their normalization layers included, so ``model.train()`` in any loop leaves them alone.

The run itself (:func:`finetune`) starts from the parent checkpoint's averaged weights and trains with
SGD without momentum, a cosine learning rate from 0.25 at global batch 512 (scaled linearly with the
batch), 2 epochs, no Mixup/CutMix and the *validation* preprocessing (Touvron et al., 2019). It reuses the
training engine (:mod:`peffnet.training.loop`, :mod:`peffnet.data`, :mod:`peffnet.training.checkpoint`,
:mod:`peffnet.training.metrics`): same atomic checkpoints, mid-epoch resume, progress bar, metric files and
``summary.json`` as ``peffnet train``, plus ``parent`` and ``finetune_stages``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import peffnet
from peffnet.data import build_dataset, make_loader
from peffnet.errors import ConfigError
from peffnet.models import ModelConfig, build, preset
from peffnet.models.config import B0_STAGES
from peffnet.models.efficientnet import EfficientNet
from peffnet.models.profile import profile_model
from peffnet.resolution import check_resolution, mod32_ok
from peffnet.training import distributed
from peffnet.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from peffnet.training.evaluate import check_data, checkpoint_file
from peffnet.training.loop import EpochAverage, StepSettings, collect_skipped, evaluate, run_epochs
from peffnet.training.metrics import MetricsLogger
from peffnet.training.optim import param_groups
from peffnet.training.train import peak_memory_bytes, restore, training_state

FINETUNE_DEPTHS = (1, 2, 3)


def check_depth(stages: object) -> int:
    """``stages`` as 1, 2 or 3, else a one-line :class:`ConfigError`."""
    if isinstance(stages, bool) or not isinstance(stages, int) or stages not in FINETUNE_DEPTHS:
        raise ConfigError(f"--stages must be 1, 2 or 3 (head / + last downsampling stage / + one more), "
                          f"got {stages!r}")
    return stages


def finetuned_stage_indices(stages: int) -> list[int]:
    """0-based indices of the MBConv stages trained at depth ``stages`` (none at depth 1).

    >>> finetuned_stage_indices(1), finetuned_stage_indices(2), finetuned_stage_indices(3)
    ([], [5, 6], [3, 4, 5, 6])
    """
    stages = check_depth(stages)
    if stages == 1:
        return []
    downsampling = [i for i, stage in enumerate(B0_STAGES) if stage.stride == 2]
    return list(range(downsampling[-(stages - 1)], len(B0_STAGES)))


def finetuned_modules(model: EfficientNet, stages: int) -> dict[str, nn.Module]:
    """The top-level parts trained at depth ``stages``, by attribute name (``stages.5``, ``head``...)."""
    parts: dict[str, nn.Module] = {f"stages.{i}": model.stages[i] for i in finetuned_stage_indices(stages)}
    parts.update(head=model.head, dropout=model.dropout, classifier=model.classifier)
    return parts


def frozen_modules(model: EfficientNet, stages: int) -> dict[str, nn.Module]:
    """The top-level parts left untouched at depth ``stages`` (the stem and the earlier stages)."""
    trained = set(finetuned_stage_indices(stages))
    parts: dict[str, nn.Module] = {"stem": model.stem}
    parts.update({f"stages.{i}": s for i, s in enumerate(model.stages) if i not in trained})
    return parts


def _train_stays_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement ``train`` of a frozen part: whatever the mode asked, the part stays in eval mode."""
    return nn.Module.train(self, False)


def freeze_for_finetune(model: EfficientNet, stages: int) -> list[str]:
    """Freeze everything but the last ``stages`` parts; return the names of the trainable parameters.

    Frozen parts get ``requires_grad=False`` and a pinned eval mode (dropout, stochastic depth and
    normalization statistics stay as in inference); the trained parts follow ``model.train()``.
    """
    model.requires_grad_(False)
    for module in finetuned_modules(model, stages).values():
        module.requires_grad_(True)
    for module in frozen_modules(model, stages).values():
        module.train = types.MethodType(_train_stays_eval, module)  # type: ignore[method-assign]
        module.train(False)
    return [name for name, p in model.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------- the fine-tuning run

REFERENCE_LR, REFERENCE_BATCH = 0.25, 512
"""Section 3.4: cosine schedule from lr 0.25 at global batch 512; other batches scale it linearly."""

EXECUTION_FIELDS = frozenset({
    "out", "data_dir", "micro_batch_size", "channels_last", "device", "workers", "eval_batch_size",
    "checkpoint_every", "log_every", "resume", "progress", "model", "group_size", "expansion", "norm"})
"""Settings that change how a run executes (or only check it), not what it computes: free on resume."""


@dataclass
class FinetuneConfig:
    """Everything ``peffnet finetune`` takes; ``None`` means "auto" (see the field comments)."""

    checkpoint: str  # parent run: its checkpoint.pt or run directory
    resolution: int  # fine-tuning (and evaluation) resolution
    out: str  # this run's directory
    stages: int = 2  # 1: head, 2: + stages 6-7, 3: + stages 4-5
    data: str | None = None  # default: the parent's dataset
    data_dir: str | None = None
    subset: int | None = None  # train on a fixed random subset of this many images
    val_subset: int | None = None
    epochs: int = 2
    batch_size: int = REFERENCE_BATCH
    micro_batch_size: int | None = None  # default: batch / processes
    lr: float | None = None  # default: 0.25 * batch / 512
    weight_decay: float = 1e-5  # the training recipe's, on the same parameter groups
    label_smoothing: float = 0.1
    seed: int = 0
    amp: str = "off"
    channels_last: bool = False
    device: str = "auto"
    workers: int | None = None
    eval_batch_size: int | None = None
    checkpoint_every: int = 0
    log_every: int = 1
    resume: bool = False
    progress: bool = True
    model: str | None = None  # expected model of the checkpoint (a check, like the three below)
    group_size: int | None = None
    expansion: int | None = None
    norm: str | None = None

    def __post_init__(self) -> None:
        check_resolution(self.resolution, "--resolution")
        check_depth(self.stages)
        if not self.out:
            raise ConfigError("--out is required: the fine-tuning run directory")
        for name in ("epochs", "batch_size", "micro_batch_size", "subset", "val_subset", "eval_batch_size",
                     "log_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ConfigError(f"--weight-decay must be a number >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1):
            raise ConfigError(f"--label-smoothing must be a number in [0, 1), got {self.label_smoothing!r}")
        if self.amp not in ("off", "bf16", "fp16"):
            raise ConfigError(f"--amp must be off, bf16 or fp16, got {self.amp!r}")

    @property
    def peak_lr(self) -> float:
        """The cosine schedule's starting lr: ``0.25 * batch / 512`` unless set."""
        return self.lr if self.lr is not None else REFERENCE_LR * self.batch_size / REFERENCE_BATCH


def computed_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a resolved run configuration that change what it computes."""
    return {k: v for k, v in config.items() if k not in EXECUTION_FIELDS and k != "config_hash"}


def config_hash(config: dict[str, Any]) -> str:
    """Fingerprint of what a fine-tuning run computes (execution settings left out): 12 hex digits."""
    return hashlib.sha256(json.dumps(computed_settings(config), sort_keys=True).encode()).hexdigest()[:12]


def check_parent_model(model_cfg: ModelConfig, cfg: FinetuneConfig, path: str) -> None:
    """A one-line error when the user named a model (or G/E/norm) other than the checkpoint's."""
    asked = {"model": ("name", cfg.model), "group size": ("group_size", cfg.group_size),
             "expansion": ("expansion", cfg.expansion), "norm": ("norm", cfg.norm)}
    if cfg.model is not None:
        preset(cfg.model)  # unknown names are reported as such
    for what, (field, value) in asked.items():
        if value is not None and getattr(model_cfg, field) != value:
            raise ConfigError(f"checkpoint {path} holds {model_cfg.name} (G{model_cfg.group_size} "
                              f"E{model_cfg.expansion} {model_cfg.norm}), not the requested {what} {value!r}")


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says (joining torchrun's process group when launched by it); returns the summary.

    Raises:
        ConfigError: bad settings, data or checkpoint (one line).
        NonFiniteLoss: the loss became NaN/inf; the last good checkpoint is kept.
    """
    ctx = distributed.setup(cfg.device)
    try:
        return _finetune(cfg, ctx)
    finally:
        distributed.cleanup()


def _finetune(cfg: FinetuneConfig, ctx: distributed.Context) -> dict[str, Any]:
    t0 = time.perf_counter()
    out, parent_path = Path(cfg.out), checkpoint_file(cfg.checkpoint).resolve()
    ckpt_path = out / "checkpoint.pt"
    if not cfg.resume and ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run ({ckpt_path.name}); add --resume to continue it "
                          f"or choose another --out")
    if cfg.amp == "fp16" and ctx.device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    own = load_checkpoint(ckpt_path) if cfg.resume else None
    model, parent = model_from_checkpoint(parent_path, averaged=True)
    check_parent_model(model.cfg, cfg, str(parent_path))
    parent_res = int(parent["train_resolution"])
    if ctx.is_main and not mod32_ok(parent_res, cfg.resolution):
        print(f"warning: fine-tuning resolution {cfg.resolution} breaks r = {parent_res} (mod 32), the parent's "
              f"training resolution (paper Section 3.3)", file=sys.stderr)

    # data: validation preprocessing for training too (Section 3.4)
    spec = cfg.data or parent["data"]["spec"]
    train_set = build_dataset(spec, "train", cfg.resolution, False, cfg.data_dir, subset=cfg.subset)
    check_data(train_set, model.cfg, spec)
    val_set = build_dataset(spec, "val", cfg.resolution, False, cfg.data_dir, subset=cfg.val_subset)
    micro = cfg.micro_batch_size or cfg.batch_size // ctx.world_size
    if cfg.batch_size % (micro * ctx.world_size):
        raise ConfigError(f"global batch {cfg.batch_size} cannot be split into micro-batches of {micro} on "
                          f"{ctx.world_size} process(es)")
    pin = ctx.device.type == "cuda"
    train_loader = make_loader(train_set, cfg.batch_size, train=True, seed=cfg.seed, rank=ctx.rank,
                               world_size=ctx.world_size, workers=cfg.workers, pin_memory=pin)
    val_loader = make_loader(val_set, cfg.eval_batch_size or micro, train=False, rank=ctx.rank,
                             world_size=ctx.world_size, workers=cfg.workers, pin_memory=pin)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    config = {**dataclasses.asdict(cfg), "checkpoint": str(parent_path), "data": spec, "lr": cfg.peak_lr,
              "micro_batch_size": micro}
    config["config_hash"] = config_hash(config)
    if own is not None and own["config"].get("config_hash") != config["config_hash"]:
        saved = computed_settings(own["config"])
        changed = [f"{k}={saved.get(k)!r}" for k, v in computed_settings(config).items() if saved.get(k) != v]
        raise ConfigError(f"the run in {out} was fine-tuned with {', '.join(changed)}; resume with the same "
                          f"settings or use another --out")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # model: parent's averaged weights, all but the last `stages` parts frozen; SGD without momentum
    trainable = freeze_for_finetune(model, cfg.stages)
    model = model.to(ctx.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.peak_lr, momentum=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    average = EpochAverage(model, decay=0.0)  # no averaging: the final weights are the last epoch's
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp == "fp16")
    step, done = 0, {"wall_time_s": 0.0, "train_time_s": 0.0, "images": 0, "skipped": []}
    if own is not None:
        step, done = restore(own, model, optimizer, scheduler, average, scaler, steps_per_epoch, ckpt_path)
    net = DistributedDataParallel(model, device_ids=[ctx.device] if pin else None) if ctx.distributed else model
    logger = MetricsLogger(out, ctx.is_main, resume_step=step if own is not None else None)
    settings = StepSettings(micro, train_set.num_classes, cfg.label_smoothing, 0.0, 1.0, cfg.amp, cfg.channels_last)
    wall_before = done["wall_time_s"]

    def elapsed() -> float:
        return wall_before + time.perf_counter() - t0

    def save(at_step: int) -> None:
        collect_skipped(done, train_loader, val_loader)
        done["wall_time_s"] = elapsed()
        if ctx.is_main:
            save_checkpoint(ckpt_path, {
                **training_state(model, optimizer, scheduler, scaler, average, at_step, steps_per_epoch, done),
                "train_resolution": cfg.resolution, "num_classes": train_set.num_classes,
                "data": {"spec": spec, "in_chans": train_set.in_chans, "subset": cfg.subset},
                "rng": {"seed": cfg.seed, "scheme": "as peffnet train"}, "config": config,
                "parent": str(parent_path), "parent_train_resolution": parent_res, "finetune_stages": cfg.stages})

    step, top1, top5 = run_epochs(
        net, model, optimizer, scheduler, scaler, average, train_loader, val_loader, settings, logger, save, done,
        step=step, epochs=cfg.epochs, global_batch=cfg.batch_size, seed=cfg.seed, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, checkpoint=ckpt_path, elapsed=elapsed, is_main=ctx.is_main,
        progress=cfg.progress, label="fine-tune epoch")

    if top1 != top1:  # nothing left to run in this process (resumed a finished run)
        top1, top5 = evaluate(model, val_loader, cfg.amp, cfg.channels_last)
    save(step)
    logger.close()
    with torch.device("meta"):
        macs = profile_model(build(model.cfg), cfg.resolution, in_chans=model.cfg.in_chans).macs
    m = model.cfg
    summary = {
        "model": m.name, "group_size": m.group_size, "expansion": m.expansion, "norm": m.norm,
        "train_resolution": cfg.resolution, "eval_resolution": cfg.resolution, "top1": top1, "top5": top5,
        "final_weights": "weights at the end of fine-tuning",
        "train_img_per_s": done["images"] / done["train_time_s"] if done["train_time_s"] else 0.0,
        "wall_time_s": done["wall_time_s"], "train_time_s": done["train_time_s"],
        "peak_memory_bytes": peak_memory_bytes(ctx.device), "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for n, p in model.named_parameters() if n in trainable),
        "macs": macs, "epochs": cfg.epochs, "steps": total_steps, "batch_size": cfg.batch_size,
        "micro_batch_size": micro, "lr": cfg.peak_lr, "skipped_images": len(done["skipped"]),
        "world_size": ctx.world_size, "amp": cfg.amp,
        "dataset": spec, "num_classes": train_set.num_classes, "config_hash": config["config_hash"],
        "device": torch.cuda.get_device_name(ctx.device) if pin else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "peffnet": peffnet.__version__, "checkpoint": str(ckpt_path),
        "parent": str(parent_path), "parent_train_resolution": parent_res, "finetune_stages": cfg.stages,
    }
    if ctx.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
