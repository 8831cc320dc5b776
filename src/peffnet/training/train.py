"""``peffnet train``: the paper's training recipe end to end (Section 3.4), on one CPU or many GPUs.

Read top to bottom, :func:`train` does: data -> resolved config -> model, optimizer, schedule, weight
average -> (resume) -> DDP / compile -> epochs (:func:`~peffnet.training.loop.run_epochs`) with per-step
logs and checkpoints -> evaluation of the averaged weights -> ``summary.json``.
Run-directory layout and checkpoint contents: ``notes/contracts.md`` and ``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

import peffnet
from peffnet.data import build_dataset, make_loader
from peffnet.errors import ConfigError
from peffnet.models import EfficientNet, build, preset
from peffnet.models.profile import profile_model
from peffnet.training import distributed
from peffnet.training.checkpoint import FORMAT, load_checkpoint, load_weights, save_checkpoint
from peffnet.training.config import (
    Resolved,
    TrainConfig,
    check_resumable,
    config_dict,
    config_hash,
    resolve,
    resolve_resolution,
)
from peffnet.training.loop import (
    EpochAverage,
    StepSettings,
    collect_skipped,
    evaluate,
    recipe_scheduler,
    rmsprop_tf,
    run_epochs,
)
from peffnet.training.metrics import MetricsLogger

OptimizerFactory = Callable[[torch.nn.Module, Resolved], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, Resolved, int], torch.optim.lr_scheduler.LRScheduler]


def recipe_optimizer(model: torch.nn.Module, run: Resolved) -> torch.optim.Optimizer:
    """RMSProp (TF form) with lr B*2^-14, decay 1 - B*2^-14, momentum 0.9, eps 1e-3, weight decay 1e-5."""
    c = run.config
    return rmsprop_tf(model, c.lr, c.rmsprop_decay, c.momentum, c.eps, c.weight_decay)


def recipe_schedule(optimizer: torch.optim.Optimizer, run: Resolved, steps_per_epoch: int
                    ) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up, then x decay_rate every decay_epochs; both stretched by the run's time scale."""
    c, s = run.config, run.time_scale
    return recipe_scheduler(optimizer, steps_per_epoch, c.warmup_epochs * s, c.decay_epochs * s, c.decay_rate)


def train(cfg: TrainConfig, make_optimizer: OptimizerFactory = recipe_optimizer,
          make_scheduler: SchedulerFactory = recipe_schedule) -> dict[str, Any]:
    """Train as ``cfg`` says (joining torchrun's process group when launched by it); returns the summary.

    Raises:
        ConfigError: bad settings, data or checkpoint (one line).
        NonFiniteLoss: the loss became NaN/inf; the last good checkpoint is kept.
    """
    ctx = distributed.setup(cfg.device)
    try:
        return _train(cfg, ctx, make_optimizer, make_scheduler)
    finally:
        distributed.cleanup()


def _train(cfg: TrainConfig, ctx: distributed.Context, make_optimizer: OptimizerFactory,
           make_scheduler: SchedulerFactory) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(cfg.out or ".")
    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path) if cfg.resume else None
    if not cfg.resume and ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run ({ckpt_path.name}); add --resume to continue it "
                          f"or choose another --out")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic

    # data, and the configuration it completes
    train_res = resolve_resolution(cfg.resolution, cfg.data, preset(cfg.model).resolution)
    train_set = build_dataset(cfg.data, "train", train_res, True, cfg.data_dir, subset=cfg.subset,
                              translate=cfg.translate)
    run = resolve(cfg, ctx.world_size, train_set.num_classes, train_set.in_chans)
    c = run.config
    if c.amp == "fp16" and ctx.device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    if state is not None:
        check_resumable(state["config"], c)
    val_set = build_dataset(c.data, "val", c.eval_resolution, False, c.data_dir, subset=c.val_subset)
    pin = ctx.device.type == "cuda"
    train_loader = make_loader(train_set, c.batch_size, train=True, seed=c.seed, rank=ctx.rank,
                               world_size=ctx.world_size, workers=c.workers, pin_memory=pin)
    val_loader = make_loader(val_set, c.eval_batch_size, train=False, rank=ctx.rank, world_size=ctx.world_size,
                             workers=c.workers, pin_memory=pin)
    steps_per_epoch, total_steps = len(train_loader), len(train_loader) * c.epochs
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_dict(c), sort_keys=False))

    # model, optimizer, schedule, weight average, loss scaler
    torch.manual_seed(c.seed)
    model = build(run.model).to(ctx.device)
    with torch.no_grad():
        model.classifier.weight.mul_(c.head_init_scale)
    if c.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.set_grad_checkpointing(c.recompute)
    optimizer = make_optimizer(model, run)
    scheduler = make_scheduler(optimizer, run, steps_per_epoch)
    average = EpochAverage(model, run.average_decay_per_epoch)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=c.amp == "fp16")
    step, done = 0, {"wall_time_s": 0.0, "train_time_s": 0.0, "images": 0, "skipped": []}
    if state is not None:
        step, done = restore(state, model, optimizer, scheduler, average, scaler, steps_per_epoch, ckpt_path)
    net = DistributedDataParallel(model, device_ids=[ctx.device] if pin else None) if ctx.distributed else model
    if c.compile:
        net = torch.compile(net)
    logger = MetricsLogger(out, ctx.is_main, resume_step=step if state is not None else None)
    settings = StepSettings(c.micro_batch_size, run.num_classes, c.label_smoothing, c.mixup_alpha,
                            c.cutmix_lambda, c.amp, c.channels_last)
    wall_before = done["wall_time_s"]

    def elapsed() -> float:
        return wall_before + time.perf_counter() - t0

    def save(at_step: int) -> None:
        """Checkpoint the run at ``at_step`` (every rank joins the gather of skipped files; rank 0 writes)."""
        collect_skipped(done, train_loader, val_loader)
        done["wall_time_s"] = elapsed()
        if ctx.is_main:
            save_checkpoint(ckpt_path, {
                **training_state(model, optimizer, scheduler, scaler, average, at_step, steps_per_epoch, done),
                "train_resolution": int(c.resolution), "num_classes": run.num_classes,
                "data": {"spec": c.data, "in_chans": run.in_chans, "subset": c.subset},
                "rng": {"seed": c.seed, "scheme": "global RNG reseeded from (seed, step, rank) before every step; "
                                                  "data randomness from (seed, epoch, image index)"},
                "config": config_dict(c)})

    # epochs: progress bar, step logs, per-epoch evaluation and checkpoint
    step, top1, top5 = run_epochs(
        net, model, optimizer, scheduler, scaler, average, train_loader, val_loader, settings, logger, save, done,
        step=step, epochs=c.epochs, global_batch=c.batch_size, seed=c.seed, log_every=c.log_every,
        checkpoint_every=c.checkpoint_every, checkpoint=ckpt_path, elapsed=elapsed, is_main=ctx.is_main,
        progress=c.progress)

    # final weights: the exponential average of the per-epoch weights
    avg_top1, avg_top5 = evaluate(average.module if average.epochs_seen else model, val_loader, c.amp,
                                  c.channels_last)
    if top1 != top1:  # no epoch ran in this process (resumed a finished run): evaluate the live weights too
        top1, top5 = evaluate(model, val_loader, c.amp, c.channels_last)
    save(step)
    logger.close()
    summary = make_summary(run, ctx, model, done, (avg_top1, avg_top5, top1, top5), total_steps, ckpt_path)
    if ctx.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def training_state(model: EfficientNet, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                   average: EpochAverage, step: int, steps_per_epoch: int, done: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint entries of every run at ``step`` (what :func:`restore` reads back): format, model
    config, live and averaged weights, optimizer/scheduler/scaler states, position and progress counters."""
    return {"format": FORMAT, "model_config": dataclasses.asdict(model.cfg), "model": model.state_dict(),
            "averaged": average.weights(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": step // steps_per_epoch,
            "step": step, "progress": dict(done)}


def restore(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, average: EpochAverage, scaler: torch.amp.GradScaler,
            steps_per_epoch: int, path: Path) -> tuple[int, dict[str, Any]]:
    """Load a checkpoint's states into the run's objects; returns (step, progress counters)."""
    what = f"checkpoint {path}"
    load_weights(model, state["model"], what)
    load_weights(average.module, state["averaged"], what)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise ConfigError(f"{what} has an optimizer/scheduler state this run cannot use: {err}") from None
    average.epochs_seen = state["step"] // steps_per_epoch
    return state["step"], dict(state["progress"])


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated, or on the CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def make_summary(run: Resolved, ctx: distributed.Context, model: torch.nn.Module, done: dict[str, Any],
                 accuracy: tuple[float, float, float, float], steps: int, ckpt_path: Path) -> dict[str, Any]:
    """``summary.json`` (fields of notes/contracts.md, plus run details); ``accuracy`` is (top-1, top-5) of
    the averaged weights then of the live weights."""
    c, m = run.config, run.model
    top1, top5, live_top1, live_top5 = accuracy
    with torch.device("meta"):
        macs = profile_model(build(m), c.eval_resolution, in_chans=m.in_chans).macs
    device = (torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda"
              else f"cpu ({torch.get_num_threads()} threads)")
    return {
        "model": m.name, "group_size": m.group_size, "expansion": m.expansion, "norm": m.norm,
        "train_resolution": int(c.resolution), "eval_resolution": c.eval_resolution,
        "top1": top1, "top5": top5, "final_weights": "exponential average of per-epoch weights",
        "live_top1": live_top1, "live_top5": live_top5,
        "train_img_per_s": done["images"] / done["train_time_s"] if done["train_time_s"] else 0.0,
        "wall_time_s": done["wall_time_s"], "train_time_s": done["train_time_s"],
        "peak_memory_bytes": peak_memory_bytes(ctx.device),
        "params": sum(p.numel() for p in model.parameters()), "macs": macs,
        "epochs": c.epochs, "steps": steps, "batch_size": c.batch_size, "micro_batch_size": c.micro_batch_size,
        "world_size": ctx.world_size, "amp": c.amp, "dataset": c.data, "num_classes": run.num_classes,
        "skipped_images": len(done["skipped"]), "skipped_files": done["skipped"][:100],
        "config_hash": config_hash(c), "device": device, "torch": torch.__version__, "peffnet": peffnet.__version__,
        "checkpoint": str(ckpt_path),
    }
