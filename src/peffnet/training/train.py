"""``peffnet train``: the paper's training recipe end to end (Section 3.4), on one CPU or many GPUs.

:func:`train_job` reads top to bottom: data -> resolved settings -> model (in the form fastest on the
device) -> optimizer, schedule, weight average -> DDP / compile; :func:`peffnet.training.run.run` then runs
it and writes the run directory (docs/formats.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from peffnet.data import build_dataset, make_loader
from peffnet.errors import ConfigError
from peffnet.fusion import fuse_proxy_norm, training_form
from peffnet.models import EfficientNet, build, preset
from peffnet.runtime.device import prefers_channels_last
from peffnet.runtime.optim import build_optimizer
from peffnet.runtime.step import StepSettings, grad_scaler
from peffnet.training import distributed
from peffnet.training.config import Resolved, TrainConfig, resolve, resolve_resolution, with_dataset_defaults
from peffnet.training.loop import Job, TrainState
from peffnet.training.optim import EpochAverage, recipe_scheduler
from peffnet.training.run import run
from peffnet.training.rundir import claim


def prepare(model: EfficientNet, form: str, ctx: distributed.Context, compile: bool) -> nn.Module:
    """The module to train: ``model`` in ``form`` (fused in place: same parameters, same state_dict keys),
    wrapped by DDP under torchrun and by ``torch.compile`` when asked."""
    if form == "fused":
        fuse_proxy_norm(model)
    net: nn.Module = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    return torch.compile(net) if compile else net


def train_job(cfg: TrainConfig, ctx: distributed.Context) -> Job:
    """Everything a ``peffnet train`` run needs, from its settings."""
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic

    # data, and the configuration it completes
    cfg = with_dataset_defaults(cfg)
    train_res = resolve_resolution(cfg.resolution, cfg.data, preset(cfg.model).resolution)
    train_set = build_dataset(cfg.data, "train", train_res, True, cfg.data_dir, subset=cfg.subset,
                              translate=cfg.translate, max_pixels=cfg.max_image_pixels, augment=cfg.augment)
    run_cfg: Resolved = resolve(cfg, ctx.world_size, train_set.num_classes, train_set.in_chans)
    c = run_cfg.config
    if c.channels_last is None:  # the layout this norm's models train fastest in on this device
        c = dataclasses.replace(c, channels_last=prefers_channels_last(c.norm, ctx.device))
    if c.amp == "fp16" and ctx.device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    val_set = build_dataset(c.data, "val", c.eval_resolution, False, c.data_dir, subset=c.val_subset,
                            max_pixels=c.max_image_pixels, augment=c.augment)
    train_loader = make_loader(train_set, c.batch_size, train=True, seed=c.seed, rank=ctx.rank,
                               world_size=ctx.world_size, workers=c.workers, device=ctx.device, decode=c.decode)
    val_loader = make_loader(val_set, c.eval_batch_size, train=False, rank=ctx.rank, world_size=ctx.world_size,
                             workers=c.workers, device=ctx.device, decode=c.decode)

    # model; RMSProp with lr B*2^-14 and decay 1 - B*2^-14; warm-up + staircase decay and the weight
    # average, their epoch counts stretched by the run's time scale
    torch.manual_seed(c.seed)
    model = build(run_cfg.model).to(ctx.device)
    with torch.no_grad():
        model.classifier.weight.mul_(c.head_init_scale)
    if c.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.set_grad_checkpointing(c.recompute)
    form = training_form(model, ctx.device, c.compile)
    net = prepare(model, form, ctx, c.compile)
    optimizer = build_optimizer(c.optimizer, model, c.lr, c.rmsprop_decay, c.momentum, c.eps, c.weight_decay)
    s = run_cfg.time_scale
    scheduler = recipe_scheduler(optimizer, len(train_loader), c.warmup_epochs * s, c.decay_epochs * s,
                                 c.decay_rate)
    state = TrainState(model, optimizer, scheduler, grad_scaler(ctx.device, c.amp),
                       EpochAverage(model, run_cfg.average_decay_per_epoch))
    step = StepSettings(c.micro_batch_size, run_cfg.num_classes, c.label_smoothing, c.mixup_alpha, c.cutmix_lambda,
                        c.amp, c.channels_last)
    record = {"train_resolution": int(c.resolution), "num_classes": run_cfg.num_classes,
              "data": {"spec": c.data, "in_chans": run_cfg.in_chans, "subset": c.subset},
              "classes": list(train_set.classes), "preprocessing": val_set.preprocessing.to_dict()}
    fixed_length = "" if not c.recipe_epochs else (
        f"warm-up, lr decay and the weight average are stretched by epochs / recipe_epochs ({c.recipe_epochs:g}), so "
        f"another length changes the steps already done (--recipe-epochs 0 makes a run extendable)")
    return Job(name="train", config=c, state=state, net=net, form=form, train_loader=train_loader,
               val_loader=val_loader, step_settings=step, ctx=ctx, record=record, fixed_length=fixed_length)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train as ``cfg`` says (in torchrun's process group when launched by it), starting or continuing the run
    in ``cfg.out`` as ``cfg.resume`` says; returns the summary.

    Raises:
        ConfigError: bad settings, data or checkpoint, or a run directory in use (one line).
        RunFailure: the loss became NaN/inf (the last finite checkpoint is kept), or a checkpoint could not
            be written.
        Stopped: a stop signal; the checkpoint of the step it stopped at is written.
    """
    if not cfg.out:
        raise ConfigError("--out is required: the run directory")
    ctx = distributed.setup(cfg.device, cfg.dist_timeout)
    with claim(Path(cfg.out), cfg.resume, cfg.keep_checkpoints, ctx, "train") as start:
        return run(train_job(cfg, ctx), start)
