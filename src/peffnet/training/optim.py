"""The recipe's optimization pieces (paper Section 3.4; REFERENCE.md): parameter groups, TensorFlow-style RMSProp,
the warm-up + staircase schedule, and the exponential average of per-epoch weights.

Weight decay: convolution and linear weights, and proxy normalization's gamma~/beta~ (their decay expresses
the prior that pre-activations stay close to normalized, Section 3.2).
No decay: normalization gamma/beta (including PN's, which play that role) and all biases. Biases are
left undecayed as in the EfficientNet reference: they do not scale with the weights, so decaying them
only pulls the SE gates and the classifier offsets towards zero without regularizing capacity.
"""

from __future__ import annotations

import math

import torch
from timm.optim import RMSpropTF
from timm.utils import ModelEmaV3
from torch import nn

PROXY_PARAM_NAMES = ("proxy_weight", "proxy_bias")


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether the parameter called ``name`` (as in ``named_parameters``) gets weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in PROXY_PARAM_NAMES:
        return True
    return leaf == "weight" and param.ndim > 1  # conv / linear kernels; norm scales are 1-D


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups for ``torch.optim``: ``weight_decay`` on :func:`decays` params, 0 on the rest."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def rmsprop_tf(model: nn.Module, lr: float, decay: float, momentum: float = 0.9, eps: float = 1e-3,
               weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """The paper's optimizer: TensorFlow-style RMSProp (timm's ``RMSpropTF``: eps inside the square root,
    mean-square initialised to 1, lr applied inside the momentum) over :func:`param_groups`."""
    return RMSpropTF(param_groups(model, weight_decay), lr=lr, alpha=decay, eps=eps, momentum=momentum)


OPTIMIZERS = ("rmsprop_tf", "adam")


def build_optimizer(name: str, model: nn.Module, lr: float, decay: float, momentum: float = 0.9, eps: float = 1e-3,
                    weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """``rmsprop_tf``: the paper's optimizer (:func:`rmsprop_tf`); ``adam``: Adam (PyTorch's: betas 0.9, 0.999, eps
    1e-8; ``decay``, ``momentum`` and ``eps`` are RMSProp's and unused), whose per-parameter steps are normalized
    from the first step on, which the short runs of docs/training.md ("Short runs and BatchNorm") need. Both
    with the L2 weight decay of :func:`param_groups`."""
    if name == "adam":
        return torch.optim.Adam(param_groups(model, weight_decay), lr=lr)
    return rmsprop_tf(model, lr, decay, momentum, eps, weight_decay)


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
