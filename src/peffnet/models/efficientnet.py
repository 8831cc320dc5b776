"""G-EfficientNet: one builder from a :class:`ModelConfig` to an ``nn.Module`` (paper Section 3.1)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from peffnet.layers.blocks import ConvNormAct, MBConv
from peffnet.models.config import (
    B0_STAGES,
    HEAD_CHANNELS,
    SE_RATIO,
    STEM_CHANNELS,
    ModelConfig,
    make_divisible,
    nearest_group_size,
    round_repeats,
)


class EfficientNet(nn.Module):
    """Stem -> 7 MBConv stages -> 1x1 head -> pool -> dropout -> classifier.

    ``stages`` is an ``nn.ModuleList`` of seven ``nn.Sequential`` so that parts of the network can be
    addressed by stage (fine-tuning, per-stage profiles).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.grad_checkpointing = False
        stem_ch = make_divisible(STEM_CHANNELS * cfg.width)
        self.stem = ConvNormAct(cfg.in_chans, stem_ch, 3, cfg.norm, stride=2)

        total_blocks = sum(round_repeats(s.repeats, cfg.depth) for s in B0_STAGES)
        in_ch, block_idx, stages = stem_ch, 0, []
        for stage in B0_STAGES:
            out_ch = make_divisible(stage.out_channels * cfg.width)
            expand_ratio = cfg.expansion if stage.expand else 1
            blocks = []
            for i in range(round_repeats(stage.repeats, cfg.depth)):
                mid = in_ch * expand_ratio
                blocks.append(MBConv(
                    in_ch, out_ch, stage.kernel, stage.stride if i == 0 else 1, expand_ratio,
                    group_size=nearest_group_size(mid, cfg.group_size),
                    se_channels=max(1, int(in_ch * SE_RATIO)),
                    norm=cfg.norm,
                    drop_path=cfg.drop_path_rate * block_idx / total_blocks,
                ))
                in_ch, block_idx = out_ch, block_idx + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)

        self.num_features = make_divisible(HEAD_CHANNELS * cfg.width)
        self.head = ConvNormAct(in_ch, self.num_features, 1, cfg.norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(cfg.drop_rate)
        self.classifier = nn.Linear(self.num_features, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He (fan-out) init for convs, uniform for the classifier, as in the EfficientNet reference."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            for block in stage:
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        return self.head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.pool(x).flatten(1))
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build(cfg: ModelConfig) -> EfficientNet:
    """Build the network a configuration describes."""
    return EfficientNet(cfg)
