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
"""

from __future__ import annotations

import types

from torch import nn

from peffnet.errors import ConfigError
from peffnet.models.config import B0_STAGES
from peffnet.models.efficientnet import EfficientNet

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
