"""G-EfficientNet: one builder from a :class:`ModelConfig` to an ``nn.Module`` (paper Section 3.1).

The network has timm's model interface (``forward_features``, ``forward_head``, ``reset_classifier``,
``forward_intermediates``, ``feature_info``, ...; docs/models.md), and traces (``torch.fx``) and scripts
(TorchScript) as it is.
"""

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn
from torch.utils.checkpoint import checkpoint

from peffnet.errors import ConfigError
from peffnet.layers.blocks import ConvNormAct, MBConv
from peffnet.models.config import (
    B0_STAGES,
    HEAD_CHANNELS,
    SE_RATIO,
    STEM_CHANNELS,
    ModelConfig,
    data_config,
    make_divisible,
    nearest_group_size,
    round_repeats,
)


def build_trunk(cfg: ModelConfig) -> tuple[ConvNormAct, nn.ModuleList, list[dict[str, Any]]]:
    """The stem and the seven stages (an ``nn.ModuleList`` of ``nn.Sequential`` of :class:`MBConv`) of a
    configuration, and its feature levels in timm's ``feature_info`` form: the output of the last stage at each
    stride (2, 4, 8, 16, 32), as timm's EfficientNet, with ``num_chs``, ``reduction``, ``module`` and ``stage``."""
    stem_ch = make_divisible(STEM_CHANNELS * cfg.width)
    stem = ConvNormAct(cfg.in_chans, stem_ch, 3, cfg.norm, stride=2)
    total_blocks = sum(round_repeats(s.repeats, cfg.depth) for s in B0_STAGES)
    in_ch, block_idx, reduction, stages, levels = stem_ch, 0, 2, [], []
    for i, stage in enumerate(B0_STAGES):
        out_ch = make_divisible(stage.out_channels * cfg.width)
        expand_ratio = cfg.expansion if stage.expand else 1
        blocks = []
        for j in range(round_repeats(stage.repeats, cfg.depth)):
            mid = in_ch * expand_ratio
            blocks.append(MBConv(
                in_ch, out_ch, stage.kernel, stage.stride if j == 0 else 1, expand_ratio,
                group_size=nearest_group_size(mid, cfg.group_size),
                se_channels=max(1, int(in_ch * SE_RATIO)),
                norm=cfg.norm,
                drop_path=cfg.drop_path_rate * block_idx / total_blocks,
            ))
            in_ch, block_idx = out_ch, block_idx + 1
        stages.append(nn.Sequential(*blocks))
        reduction *= stage.stride
        if i + 1 == len(B0_STAGES) or B0_STAGES[i + 1].stride > 1:
            levels.append({"num_chs": out_ch, "reduction": reduction, "module": f"stages.{i}", "stage": i + 1})
    return stem, nn.ModuleList(stages), levels


def init_weights(module: nn.Module) -> None:
    """He (fan-out) init for convs, uniform for the classifier, as in the EfficientNet reference (nothing to do on
    the meta device, where a model is shapes only)."""
    if any(p.is_meta for p in module.parameters()):
        return
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def take_indices(levels: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's feature-index convention: ``None`` all levels, an int ``n`` the last ``n``, a sequence those
    levels (negative counts from the end), sorted.

    Raises:
        ValueError: (a :class:`~peffnet.errors.ConfigError`) an index or count out of range.
    """
    if indices is None:
        return list(range(levels))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= levels:
            raise ConfigError(f"the last {indices} feature levels: there are {levels}, ask for 1 to {levels}")
        return list(range(levels - indices, levels))
    if isinstance(indices, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        wrong = [i for i in indices if not -levels <= i < levels]
        if wrong or not indices:
            raise ConfigError(f"feature index {wrong[0] if wrong else '(none)'} is out of range: this model has "
                              f"{levels} feature levels, 0 to {levels - 1} (strides 2 to 32)")
        return sorted({i % levels for i in indices})
    raise ConfigError(f"feature indices must be an int or a list of ints, got {indices!r}")


class EfficientNet(nn.Module):
    """Stem -> 7 MBConv stages -> 1x1 head -> pool -> dropout -> classifier.

    ``stages`` is an ``nn.ModuleList`` of seven ``nn.Sequential`` so that parts of the network can be
    addressed by stage (fine-tuning, per-stage profiles, feature levels). ``pool`` is timm's selectable global
    pooling (``cfg.global_pool``; ``''``: none), ``classifier`` an ``nn.Identity`` when ``num_classes == 0``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.grad_checkpointing = False
        self.stem, self.stages, self.feature_info = build_trunk(cfg)
        self.num_features = make_divisible(HEAD_CHANNELS * cfg.width)
        self.head = ConvNormAct(self.feature_info[-1]["num_chs"], self.num_features, 1, cfg.norm)
        self.pool = SelectAdaptivePool2d(pool_type=cfg.global_pool, flatten=bool(cfg.global_pool))
        self.head_hidden_size = self.num_features * self.pool.feat_mult()
        self.dropout = nn.Dropout(cfg.drop_rate)
        self.classifier = nn.Linear(self.head_hidden_size, cfg.num_classes) if cfg.num_classes else nn.Identity()
        init_weights(self)
        self.pretrained_cfg = self.default_cfg = data_config(cfg)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups (layer-wise learning-rate decay): the stem, then each stage (``coarse``) or
        each block, then the head (the classifier joins the last group)."""
        return {"stem": r"^stem", "blocks": [(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None),
                                             (r"^head", (99999,))]}

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised classifier for ``num_classes`` (0: none, ``forward`` returns the pooled
        features) and, when given, a new global pooling (``avg``, ``max``, ``avgmax``, ``catavgmax``, or ``''``:
        none, with ``num_classes=0``); ``cfg`` follows."""
        pool_type = self.cfg.global_pool if global_pool is None else global_pool
        self.cfg = replace(self.cfg, num_classes=num_classes, global_pool=pool_type)  # validates both
        self.num_classes = num_classes
        self.pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.head_hidden_size = self.num_features * self.pool.feat_mult()
        like = next(self.parameters())
        classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()
        init_weights(classifier)
        self.classifier = classifier.to(device=like.device, dtype=like.dtype).train(self.training)

    def _checkpointed(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """``stage(x)`` with each block recomputed in the backward pass (when training with gradients)."""
        for block in stage:
            x = checkpoint(block, x, use_reentrant=False) if self.training and torch.is_grad_enabled() else block(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:  # (TorchScript compiles ``stage(x)`` only)
            x = self._checkpointed(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
        return self.head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[torch.Tensor] | tuple[torch.Tensor, list]:
        """timm's ``forward_intermediates``: the feature maps of the levels ``indices`` (:func:`take_indices`;
        ``feature_info`` describes them) and, unless ``intermediates_only``, the final features
        (``forward_features(x)``). ``stop_early`` stops after the last level asked for (the final features are
        then that level's map). No normalization applies to the levels, so ``norm=True`` is refused, as is an
        ``output_fmt`` other than NCHW.

        Raises:
            ValueError: ``norm=True``, another ``output_fmt``, an index out of range, or a level pruned by
                :meth:`prune_intermediate_layers`.
        """
        if norm:
            raise ConfigError("norm=True: peffnet's feature levels are stage outputs with no final norm to apply")
        if output_fmt != "NCHW":
            raise ConfigError(f"output_fmt {output_fmt!r}: peffnet's feature maps are NCHW only")
        wanted = {self.feature_info[i]["stage"] - 1 for i in take_indices(len(self.feature_info), indices)}
        if max(wanted) >= len(self.stages):
            raise ConfigError(f"feature level(s) after stage {len(self.stages)} were pruned "
                              f"(prune_intermediate_layers)")
        last = max(wanted) if stop_early or intermediates_only else len(self.stages) - 1
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > last:
                break
            x = self._checkpointed(stage, x) if self.grad_checkpointing else stage(x)
            if i in wanted:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return (self.head(x) if last == len(self.stages) - 1 else x), intermediates

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last feature level of ``indices`` and, with ``prune_head``, the head,
        pooling and classifier (timm's interface); returns the levels kept (:func:`take_indices`)."""
        levels = take_indices(len(self.feature_info), indices)
        last = self.feature_info[levels[-1]]["stage"] - 1
        self.stages = self.stages[:last + 1]
        if prune_head:
            self.head = nn.Identity()
            self.num_features = self.feature_info[levels[-1]]["num_chs"]
            self.reset_classifier(0, "")
        return levels


def build(cfg: ModelConfig) -> EfficientNet:
    """Build the network a configuration describes."""
    return EfficientNet(cfg)
