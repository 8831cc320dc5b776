"""Reusable training pieces: the recipe's optimizer and schedule, one step with micro-batching, one epoch,
evaluation, the exponential average of per-epoch weights (paper Section 3.4), and the epoch loop
(:func:`run_epochs`) that ``peffnet train`` and ``peffnet finetune`` share.

These take plain modules, optimizers and loaders so that fine-tuning and evaluation code can reuse them
with their own optimizer/scheduler (see :func:`peffnet.training.train.train`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.optim import RMSpropTF
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from peffnet.data import Loader
from peffnet.training import distributed
from peffnet.training.metrics import MetricsLogger
from peffnet.training.mixing import mix_batch
from peffnet.training.optim import param_groups


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the run stops before the update is applied."""


def rmsprop_tf(model: nn.Module, lr: float, decay: float, momentum: float = 0.9, eps: float = 1e-3,
               weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """The paper's optimizer: TensorFlow-style RMSProp (timm's ``RMSpropTF``: eps inside the square root,
    mean-square initialised to 1, lr applied inside the momentum) over :func:`peffnet.training.optim.param_groups`."""
    return RMSpropTF(param_groups(model, weight_decay), lr=lr, alpha=decay, eps=eps, momentum=momentum)


def recipe_lr_factor(step: int, steps_per_epoch: int, warmup_epochs: float, decay_epochs: float,
                     decay_rate: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warm-up over ``warmup_epochs``,
    otherwise ``decay_rate ** floor(epoch / decay_epochs)`` (staircase exponential decay counted from step 0,
    as TensorFlow's EfficientNet reference does; the warm-up replaces its first part)."""
    warmup_steps = warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return min(1.0, (step + 1) / warmup_steps)
    return decay_rate ** math.floor(step / (decay_epochs * steps_per_epoch))


def recipe_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, warmup_epochs: float,
                     decay_epochs: float, decay_rate: float) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`recipe_lr_factor` as a per-step ``LambdaLR`` (call ``step()`` after every optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: recipe_lr_factor(
        s, steps_per_epoch, warmup_epochs, decay_epochs, decay_rate))


class EpochAverage(ModelEmaV3):
    """Exponential average of the weights at the end of each epoch, the paper's final weights.

    The first epoch's weights start the average (as the authors' ``weight_avg.py`` does); each later epoch
    ``e`` gives ``avg <- decay * avg + (1 - decay) * w_e``. Until the first epoch ends the average is the
    model itself (:meth:`weights`).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, decay=decay)
        self.epochs_seen = 0

    @torch.no_grad()
    def end_epoch(self, model: nn.Module) -> None:
        """Fold the weights of an epoch that just ended into the average."""
        if self.epochs_seen == 0:
            self.set(model)
        else:
            self.update(model)
        self.epochs_seen += 1

    def weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The averaged state dict (the model's own while no epoch has ended yet)."""
        return (self.module if self.epochs_seen else model).state_dict()


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass: bf16 (CPU/CUDA) or fp16 (CUDA), else nothing."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@dataclass(frozen=True)
class StepSettings:
    """What one optimizer step needs besides model, optimizer and data."""

    micro_batch_size: int
    num_classes: int
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_lambda: float = 1.0
    amp: str = "off"
    channels_last: bool = False


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               images: torch.Tensor, labels: torch.Tensor, s: StepSettings) -> float:
    """One optimizer step on this rank's share of the global batch, accumulated over micro-batches.

    Each micro-batch's loss is summed over its images and divided by this rank's batch size, so the
    accumulated gradient is the mean over the rank's images; DDP then averages ranks (equal shares), giving
    the mean over the global batch whatever the micro-batch size and world size. Returns the mean loss over
    the global batch; raises :class:`NonFiniteLoss` (on every rank) before updating if it is NaN or inf.
    """
    device = next(model.parameters()).device
    local = images.shape[0]
    chunks = list(zip(images.split(s.micro_batch_size), labels.split(s.micro_batch_size), strict=True))
    total = torch.zeros((), device=device)
    for i, (x, y) in enumerate(chunks):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x, targets = mix_batch(x, y, s.num_classes, s.mixup_alpha, s.cutmix_lambda)
        last = i == len(chunks) - 1
        sync = contextlib.nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync()
        with sync:
            with autocast(device, s.amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=s.label_smoothing, reduction="sum") / local
            scaler.scale(loss).backward()
        total += loss.detach()
    mean_loss = distributed.all_reduce_sum(total).item() / distributed.world_size()
    if not math.isfinite(mean_loss):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(f"loss is {mean_loss}")
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss


@dataclass(frozen=True)
class StepLog:
    """What :func:`train_one_epoch` reports after each step."""

    step: int  # optimizer steps done so far in the whole run
    loss: float
    lr: float
    img_per_s: float  # global images per second for this step


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    settings: StepSettings, *, first_step: int, global_batch: int, seed: int = 0,
                    on_step: Callable[[StepLog], None] | None = None) -> tuple[float, int, float]:
    """Train over ``loader`` (one epoch, possibly starting mid-way at run step ``first_step``).

    Before each step the global RNG is reseeded from (seed, step, rank), so dropout, stochastic depth and
    the mixing draws are reproducible from the step alone -- the same after a resume.
    Returns (mean loss, steps done, seconds spent).
    """
    model.train()
    rank = distributed.rank()
    step, losses, start = first_step, [], time.perf_counter()
    for images, labels in loader:
        tick = time.perf_counter()
        torch.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)
        lr = optimizer.param_groups[0]["lr"]
        try:
            loss = train_step(model, optimizer, scaler, images, labels, settings)
        except NonFiniteLoss as err:
            raise NonFiniteLoss(f"{err} at step {step + 1}") from None
        scheduler.step()
        step += 1
        losses.append(loss)
        if on_step is not None:
            on_step(StepLog(step, loss, lr, global_batch / (time.perf_counter() - tick)))
    return (sum(losses) / len(losses) if losses else float("nan")), step - first_step, time.perf_counter() - start


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
        counts += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), torch.tensor(len(labels), device=device)])
    distributed.all_reduce_sum(counts)
    model.train(was_training)
    c1, c5, n = counts.tolist()
    return (100.0 * c1 / n, 100.0 * c5 / n) if n else (float("nan"), float("nan"))


def collect_skipped(done: dict[str, Any], *loaders: Loader) -> None:
    """Move the image files the loaders skipped (unreadable, gathered from every rank) into ``done["skipped"]``,
    each listed once."""
    new = distributed.all_gather_lists([path for loader in loaders for path in loader.skipped])
    done["skipped"] = sorted(set(done["skipped"]).union(new))
    for loader in loaders:
        loader.skipped.clear()


def run_epochs(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, average: EpochAverage,
               train_loader: Loader, val_loader: Loader, settings: StepSettings, logger: MetricsLogger,
               save: Callable[[int], None], done: dict[str, Any], *, step: int, epochs: int, global_batch: int,
               seed: int, log_every: int, checkpoint_every: int, checkpoint: Path, elapsed: Callable[[], float],
               is_main: bool, progress: bool, label: str = "epoch") -> tuple[int, float, float]:
    """Run epochs from run step ``step`` (mid-epoch after a resume) up to ``epochs``.

    ``net`` is trained (it may be ``model`` wrapped by DDP or ``torch.compile``); ``model`` is evaluated,
    averaged and saved. Each step updates the progress bar, logs every ``log_every`` steps and calls
    ``save(step)`` every ``checkpoint_every`` steps within an epoch; each epoch adds its training time and
    images to ``done``, folds the weights into ``average``, evaluates, logs, prints one line and saves.
    ``elapsed()`` is the run's wall time so far; ``label`` names the epochs in the bar and messages.
    Returns (step, top-1, top-5) of the last epoch's live weights (NaN when no epoch was left to run).

    Raises:
        NonFiniteLoss: the loss became NaN/inf; names the epoch and whether ``checkpoint`` is kept.
    """
    steps_per_epoch = len(train_loader)
    top1 = top5 = float("nan")

    def on_step(log: StepLog, bar: tqdm) -> None:
        bar.update()
        bar.set_postfix(loss=f"{log.loss:.4f}", lr=f"{log.lr:.3g}", img_s=f"{log.img_per_s:.0f}")
        if log.step % log_every == 0:
            logger.log({"kind": "step", "epoch": (log.step - 1) // steps_per_epoch + 1, "step": log.step,
                        "loss": log.loss, "lr": log.lr, "img_per_s": log.img_per_s, "time_s": elapsed()})
        if checkpoint_every and log.step % checkpoint_every == 0 and log.step % steps_per_epoch:
            save(log.step)

    for epoch in range(step // steps_per_epoch, epochs):
        train_loader.set_epoch(epoch, step - epoch * steps_per_epoch)
        bar = tqdm(total=steps_per_epoch, initial=step - epoch * steps_per_epoch, desc=f"{label} {epoch + 1}/{epochs}",
                   unit="step", disable=not (is_main and progress), dynamic_ncols=True)
        try:
            loss, steps, seconds = train_one_epoch(net, optimizer, scheduler, scaler, train_loader, settings,
                                                   first_step=step, global_batch=global_batch, seed=seed,
                                                   on_step=functools.partial(on_step, bar=bar))
        except NonFiniteLoss as err:
            last = f"the last good checkpoint {checkpoint} is kept" if checkpoint.exists() else "no checkpoint yet"
            raise NonFiniteLoss(f"{err} ({label} {epoch + 1}); training stopped, {last}") from None
        finally:
            bar.close()
        step += steps
        done["train_time_s"] += seconds
        done["images"] += steps * global_batch
        average.end_epoch(model)
        top1, top5 = evaluate(model, val_loader, settings.amp, settings.channels_last)
        img_per_s = steps * global_batch / seconds
        logger.log({"kind": "epoch", "epoch": epoch + 1, "step": step, "loss": loss,
                    "lr": optimizer.param_groups[0]["lr"], "img_per_s": img_per_s, "top1": top1, "top5": top5,
                    "time_s": elapsed()})
        if is_main:
            tqdm.write(f"{label} {epoch + 1}/{epochs}: loss {loss:.4f}  top-1 {top1:.2f} %  top-5 {top5:.2f} %  "
                       f"{img_per_s:.0f} img/s")
        save(step)
        if is_main and done["skipped"]:
            tqdm.write(f"skipped {len(done['skipped'])} unreadable image file(s) so far, e.g. {done['skipped'][0]}")
    return step, top1, top5
