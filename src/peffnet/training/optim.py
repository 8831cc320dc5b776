"""The recipe's schedule and weight averaging (paper Section 3.4): the warm-up + staircase learning-rate
schedule and the exponential average of per-epoch weights (the optimizer itself: :mod:`peffnet.runtime.optim`).
"""

from __future__ import annotations

import math

import torch
from timm.utils import ModelEmaV3
from torch import nn


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
