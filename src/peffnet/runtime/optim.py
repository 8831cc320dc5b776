"""The paper's optimizer (Section 3.4; docs/reference.md): parameter groups and TensorFlow-style RMSProp, for
training runs and for the benchmarks that time their step.

Weight decay: convolution and linear weights, and proxy normalization's gamma~/beta~ (their decay expresses
the prior that pre-activations stay close to normalized, Section 3.2).
No decay: normalization gamma/beta (including PN's, which play that role) and all biases. Biases are
left undecayed as in the EfficientNet reference: they do not scale with the weights, so decaying them
only pulls the SE gates and the classifier offsets towards zero without regularizing capacity.
"""

from __future__ import annotations

import torch
from timm.optim import RMSpropTF
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
