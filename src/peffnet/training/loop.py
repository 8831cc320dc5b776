"""The training loop, read top to bottom: evaluation and :func:`fit`, the epoch loop that ``peffnet train`` and
``peffnet finetune`` share around the training step (:func:`peffnet.runtime.step.train_step`; paper Section 3.4).

A :class:`Job` is everything one run needs: its resolved settings, the state a checkpoint holds
(:class:`TrainState`), the module that is trained (the same model, possibly fused, DDP-wrapped or compiled) and
the parts of it that stay frozen in eval mode (fine-tuning: :func:`train_mode`), loaders and step settings.
:func:`peffnet.training.run.run` builds the files around it (checkpoints, logs, summary) and hands
:func:`fit` its :class:`Hooks`: checkpointing, the clock, and the stop requests of
:mod:`peffnet.training.signals`. Each epoch of :func:`fit` is an :class:`Epoch`: its steps' losses read back,
checked and logged, and its end (average, evaluate, save).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from peffnet.data import Loader
from peffnet.errors import RunFailure
from peffnet.models import EfficientNet
from peffnet.runtime.step import StepSettings, autocast, train_step
from peffnet.settings import Settings
from peffnet.training import distributed
from peffnet.training.metrics import MetricsLogger
from peffnet.training.optim import EpochAverage
from peffnet.training.signals import Stopped, signal_name


class NonFiniteLoss(RunFailure):
    """The training loss (or the weights) became NaN or infinite; the run stops, and no checkpoint of those
    weights is written."""


@dataclass
class StepLoss:
    """A step's loss on its way to the host: the value once ``ready`` (an event of the copy on a GPU)."""

    step: int
    epoch: int
    lr: float
    value: torch.Tensor
    done: Any = None  # torch.cuda.Event recorded after the copy; None on a CPU


class LossReader:
    """Reads the steps' losses without making a GPU wait: each loss is copied to pinned host memory as the
    step is queued, and read once its copy has landed (on a CPU: at once). The NaN/inf check and the step's
    log line come then, a step or two after the step on a GPU (whose update is already applied by then: a
    diverged run stops there, and no checkpoint of its weights is written). A step's img/s on a GPU is the
    device time between the ends of consecutive steps."""

    def __init__(self) -> None:
        self.waiting: list[StepLoss] = []
        self.last_end: Any = None

    def put(self, step: int, epoch: int, lr: float, loss: torch.Tensor) -> None:
        if loss.device.type != "cuda":
            self.waiting.append(StepLoss(step, epoch, lr, loss))
            return
        done = torch.cuda.Event(enable_timing=True)
        host = loss.to("cpu", non_blocking=True)
        done.record()
        self.waiting.append(StepLoss(step, epoch, lr, host, done))

    def take(self, wait: bool = False) -> list[tuple[StepLoss, float, float | None]]:
        """The steps whose losses have landed (all of them with ``wait``), with the loss value and, on a GPU,
        the step's seconds on the device (``None`` for the first step read, or on a CPU)."""
        out = []
        while self.waiting and (wait or self.waiting[0].done is None or self.waiting[0].done.query()):
            s = self.waiting.pop(0)
            seconds = None
            if s.done is not None:
                s.done.synchronize()
                seconds = self.last_end.elapsed_time(s.done) / 1000 if self.last_end is not None else None
                self.last_end = s.done
            out.append((s, float(s.value.item()), seconds))
        return out


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], amp: str = "off",
             channels_last: bool = False) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of ``model`` over ``loader``, summed over all ranks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, images
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        counts += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), torch.full((), len(labels), device=device)])
    distributed.all_reduce_sum(counts)
    model.train(was_training)
    c1, c5, n = counts.tolist()
    return (100.0 * c1 / n, 100.0 * c5 / n) if n else (float("nan"), float("nan"))


@dataclass
class Progress:
    """Counters a run accumulates over its processes' lifetimes (saved in the checkpoint)."""

    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    images: int = 0
    skipped: list[str] = field(default_factory=list)  # image files skipped (unreadable or too large), each once
    oversized: list[str] = field(default_factory=list)  # those of them over the pixel limit (never decoded)
    resumes: list[dict[str, Any]] = field(default_factory=list)  # {"step", "changed": {setting: [before, now]}}

    @property
    def train_img_per_s(self) -> float:
        return self.images / self.train_time_s if self.train_time_s else 0.0


@dataclass
class TrainState:
    """Everything a checkpoint restores: the model (its own weights, whichever form it is in), optimizer,
    schedule, loss scaler, weight average (``None``: the final weights are the last ones), the optimizer
    steps done and the progress counters."""

    model: EfficientNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    average: EpochAverage | None
    step: int = 0
    progress: Progress = field(default_factory=Progress)

    def final_model(self) -> nn.Module:
        """The final weights: the per-epoch average once an epoch has ended, else the model itself."""
        return self.average.module if self.average is not None and self.average.epochs_seen else self.model


class RunConfig(Protocol):
    """A run's resolved settings as the loop and the run directory read them: a ``TrainConfig`` or
    ``FinetuneConfig`` with its "auto" values filled in (:class:`peffnet.settings.Settings`)."""

    out: str
    epochs: int
    batch_size: int
    seed: int
    log_every: int
    checkpoint_every: int
    progress: bool

    def recorded_in(self, directory: str | os.PathLike) -> Settings: ...

    def resume_changes(self, saved: dict[str, Any], what: str) -> dict[str, tuple[Any, Any]]: ...

    def config_hash(self) -> str: ...


def train_mode(net: nn.Module, frozen: Iterable[nn.Module] = ()) -> None:
    """``net`` in training mode but for its ``frozen`` parts (fine-tuning's, paper Section 3.4): those stay in
    eval mode, their normalization statistics, dropout and stochastic depth as in inference."""
    net.train()
    for part in frozen:
        part.eval()


@dataclass(kw_only=True)
class Job:
    """One run as the loop sees it; built by :func:`peffnet.training.train.train_job` or
    :func:`peffnet.training.finetune.finetune_job`. What the settings say (run directory, length, batch, seed,
    logging) is read from ``config``, not copied."""

    name: str  # "train" or "finetune"
    config: RunConfig  # resolved: config.yaml, the checkpoint's "config", config_hash, the resume check
    state: TrainState
    net: nn.Module  # what is trained: state.model, or it wrapped by DDP and/or torch.compile
    form: str  # "plain" or "fused" (peffnet.fuse_proxy_norm): what the banner and summary.json say
    train_loader: Loader
    val_loader: Loader
    step_settings: StepSettings
    ctx: distributed.Context
    frozen: list[nn.Module] = field(default_factory=list)  # parts that stay in eval mode (train_mode)
    record: dict[str, Any] = field(default_factory=dict)  # checkpoint entries particular to this kind of run
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json fields particular to this kind of run
    fixed_length: str = ""  # why --epochs cannot change when the run is resumed ("": it can)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def global_batch(self) -> int:
        return self.config.batch_size

    @property
    def label(self) -> str:
        return "epoch" if self.name == "train" else "fine-tune epoch"

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def accuracy(self, model: nn.Module) -> tuple[float, float]:
        """Top-1 and top-5 (percent) of ``model`` on the validation set, in the steps' precision and layout."""
        return evaluate(model, self.val_loader, self.step_settings.amp, self.step_settings.channels_last)


@dataclass(frozen=True)
class Hooks:
    """What :func:`fit` calls in the run around it (:func:`peffnet.training.run.run`)."""

    save: Callable[[], None]  # write a checkpoint at the current step (every rank calls it; rank 0 writes)
    last_checkpoint: Callable[[], str]  # "DIR/checkpoint.pt (step 12)", or "no checkpoint yet"
    elapsed: Callable[[], float]  # the run's wall time so far, earlier processes included
    stop_signal: Callable[[], int]  # the signal every rank agrees to stop on, 0 to go on (one all-reduce)


def diverged(what: str, step: int, where: str, hooks: Hooks) -> NonFiniteLoss:
    """The error of a run whose loss or weights became NaN/inf: names the last finite checkpoint."""
    return NonFiniteLoss(f"{what} at step {step} ({where}); training stopped; the last finite checkpoint is "
                         f"{hooks.last_checkpoint()}: the same command resumes from it (with a lower --lr, say)")


def stopped(signum: int, step: int, where: str, hooks: Hooks) -> Stopped:
    """The exception of a run stopped by a signal after its checkpoint at ``step``."""
    return Stopped(signum, f"stopped by {signal_name(signum)} after step {step} ({where}); checkpoint "
                           f"{hooks.last_checkpoint()}: the same command resumes it")


def advance(job: Job, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One step of a run: the global RNG reseeded from (seed, step, rank), so that dropout, stochastic depth and
    the mixing draws are reproducible from the step alone (the same after a resume); the training step; the
    schedule. Returns the global batch's mean loss, on the device (nothing here makes a GPU wait for the
    host)."""
    state = job.state
    torch.manual_seed((job.config.seed * 1_000_003 + state.step) * 1_009 + distributed.rank())
    loss = train_step(job.net, state.optimizer, state.scaler, images, labels, job.step_settings)
    state.scheduler.step()
    state.step += 1
    return distributed.all_reduce_sum(loss) / distributed.world_size()


class Epoch:
    """One epoch of a run as the host sees it. Its steps' losses are read back (:class:`LossReader`), each
    checked (NaN/inf stops the run), counted, shown on the progress bar and logged every ``log_every`` steps;
    :meth:`end` closes the epoch. A context manager: the progress bar closes on the way out."""

    def __init__(self, job: Job, logger: MetricsLogger, hooks: Hooks, epoch: int) -> None:
        self.job, self.logger, self.hooks, self.number = job, logger, hooks, epoch + 1
        first = job.state.step - epoch * job.steps_per_epoch
        self.bar = tqdm(total=job.steps_per_epoch, initial=first, desc=f"{job.label} {epoch + 1}/{job.epochs}",
                        unit="step", disable=not (job.ctx.is_main and job.config.progress), dynamic_ncols=True)
        self.reader = LossReader()
        self.losses: list[float] = []
        self.start = self.tick = time.perf_counter()  # tick: when the latest step began (a CPU step's img/s)

    def __enter__(self) -> Epoch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def put(self, lr: float, loss: torch.Tensor, tick: float) -> None:
        """The loss of the step just taken (begun at host time ``tick``, at learning rate ``lr``); reads the
        losses that have landed."""
        self.tick = tick
        self.reader.put(self.job.state.step, self.number, lr, loss)
        self.read()

    def read(self, wait: bool = False) -> None:
        """Check, count, show and log the steps whose losses have landed (all of them with ``wait``)."""
        job = self.job
        for s, value, seconds in self.reader.take(wait):
            if not math.isfinite(value):
                raise diverged(f"loss is {value}", s.step, f"{job.label} {s.epoch}", self.hooks)
            self.losses.append(value)
            img_per_s = job.global_batch / (seconds if seconds is not None else time.perf_counter() - self.tick)
            self.bar.update()
            self.bar.set_postfix(loss=f"{value:.4f}", lr=f"{s.lr:.3g}", img_s=f"{img_per_s:.0f}")
            if s.step % job.config.log_every == 0:
                self.logger.log({"kind": "step", "epoch": s.epoch, "step": s.step, "loss": value, "lr": s.lr,
                                 "img_per_s": img_per_s, "time_s": self.hooks.elapsed()})

    def end(self) -> tuple[float, float]:
        """The epoch's end, once every loss is read: its time and images added to the progress, the weights
        folded into the average, the live weights evaluated, the epoch logged and printed, a checkpoint
        written. Returns the live weights' (top-1, top-5)."""
        job, state, hooks = self.job, self.job.state, self.hooks
        seconds, images = time.perf_counter() - self.start, len(self.losses) * job.global_batch
        state.progress.train_time_s += seconds
        state.progress.images += images
        if state.average is not None:
            state.average.end_epoch(state.model)
        live = job.accuracy(state.model)
        loss, img_per_s = sum(self.losses) / len(self.losses), images / seconds
        self.logger.log({"kind": "epoch", "epoch": self.number, "step": state.step, "loss": loss,
                         "lr": state.optimizer.param_groups[0]["lr"], "img_per_s": img_per_s, "top1": live[0],
                         "top5": live[1], "time_s": hooks.elapsed()})
        if job.ctx.is_main:
            tqdm.write(f"{job.label} {self.number}/{job.epochs}: loss {loss:.4f}  top-1 {live[0]:.2f} %  "
                       f"top-5 {live[1]:.2f} %  {img_per_s:.0f} img/s")
        hooks.save()
        if job.ctx.is_main and state.progress.skipped:
            tqdm.write(f"skipped {len(state.progress.skipped)} image file(s) so far (unreadable, or over the "
                       f"pixel limit: {len(state.progress.oversized)}), e.g. {state.progress.skipped[0]}")
        return live


def save_or_stop(job: Job, epoch: Epoch, hooks: Hooks, where: str) -> None:
    """After a step inside an epoch: ask whether a rank got a stop signal; write a checkpoint when one is due
    (every ``checkpoint_every`` steps) or the run stops, every loss read first (a diverged step is never
    saved); then stop if asked."""
    step, every = job.state.step, job.config.checkpoint_every
    signum = hooks.stop_signal()
    if signum or (every and step % every == 0):
        epoch.read(wait=True)
        hooks.save()
    if signum:
        raise stopped(signum, step, where, hooks)


def fit(job: Job, logger: MetricsLogger, hooks: Hooks) -> tuple[float, float] | None:
    """Run the epochs left, from ``job.state.step`` (mid-epoch after a resume) to ``job.epochs``.

    Each step (:func:`advance`) is read back, shown and logged (:class:`Epoch`); inside an epoch the loop then
    checkpoints when due and stops if a rank got a stop signal (:func:`save_or_stop`). Each epoch ends with
    :meth:`Epoch.end` (average, evaluate, log, save), and the loop asks again. Returns (top-1, top-5) of the
    last epoch's live weights, or ``None`` when no epoch was left to run.

    Raises:
        NonFiniteLoss: the loss became NaN/inf; names the step, the epoch and the last finite checkpoint.
        Stopped: a stop signal; raised after the checkpoint at the step it stopped at.
    """
    state, spe = job.state, job.steps_per_epoch
    live = None
    for epoch in range(state.step // spe, job.epochs):
        where = f"{job.label} {epoch + 1}/{job.epochs}"
        job.train_loader.set_epoch(epoch, state.step - epoch * spe)
        train_mode(job.net, job.frozen)
        with Epoch(job, logger, hooks, epoch) as this:
            for images, labels in job.train_loader:
                tick, lr = time.perf_counter(), state.optimizer.param_groups[0]["lr"]
                this.put(lr, advance(job, images, labels), tick)
                if state.step % spe:  # the epoch's end is saved by this.end()
                    save_or_stop(job, this, hooks, where)
            this.read(wait=True)
        live = this.end()
        signum = hooks.stop_signal()
        if signum:
            raise stopped(signum, state.step, f"end of {where}", hooks)
    return live
