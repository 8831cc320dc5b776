"""The training step: one optimizer step with micro-batching, mixing and mixed precision (paper Section 3.4).

``peffnet train`` and ``peffnet finetune`` take it once per batch (:func:`peffnet.training.loop.fit`), and every
benchmark times it (:mod:`peffnet.measure.bench`, ``peffnet study``'s speed, ``scripts/device_check.py``,
``benchmarks/bench_norms.py``), so a benchmark's img/s is the img/s of the step that trains.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from peffnet.runtime.mixing import mix_batch

AMP = ("off", "bf16", "fp16")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass: bf16 (CPU/CUDA) or fp16 (CUDA), else nothing."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """The loss scaler of a precision: active for fp16 only (bf16 and fp32 gradients do not underflow)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


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


def no_sync(net: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` (skip the gradient all-reduce of a micro-batch that is not the last), also when the
    DDP module is wrapped by ``torch.compile``; nothing for a single process."""
    ddp = getattr(net, "_orig_mod", net)
    return ddp.no_sync() if isinstance(ddp, DistributedDataParallel) else contextlib.nullcontext()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               images: torch.Tensor, labels: torch.Tensor, s: StepSettings) -> torch.Tensor:
    """One optimizer step on this process's share of the global batch, accumulated over micro-batches.

    Each micro-batch's loss is summed over its images and divided by this process's batch size, so the
    accumulated gradient is the mean over its images; DDP then averages the processes (equal shares), giving
    the mean over the global batch whatever the micro-batch size and world size. Returns this process's mean
    loss as a tensor on the device: reading it is left to the caller, so that a GPU is not made to wait for the
    host every step.
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
        with contextlib.nullcontext() if i == len(chunks) - 1 else no_sync(model):
            with autocast(device, s.amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=s.label_smoothing, reduction="sum") / local
            scaler.scale(loss).backward()
        total += loss.detach()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total
