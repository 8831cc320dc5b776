"""The G-EfficientNet trunk as a backbone: feature maps at strides 2 to 32 for detection and segmentation heads.

:class:`EfficientNetFeatures` is what ``create_model(name, features_only=True)`` (and timm's
``timm.create_model("peffnet_...", features_only=True)``) builds: the stem and the stages of the plain
:class:`~peffnet.models.EfficientNet`, under the same names (its ``state_dict`` is the classifier's without
``head`` and ``classifier``), returning the output of the last stage at each stride, as timm's EfficientNet
backbones do. The normalizations are those of the classifier; with LN+PN or GN+PN every feature map of an
image depends on that image only (paper Section 3.2): a detection batch needs no batch statistics.
"""

from collections.abc import Sequence

import torch
from timm.models import FeatureInfo
from torch import nn
from torch.utils.checkpoint import checkpoint

from peffnet.errors import ConfigError
from peffnet.models.config import ModelConfig, data_config
from peffnet.models.efficientnet import build_trunk, init_weights, take_indices

DEFAULT_OUT_INDICES = (0, 1, 2, 3, 4)
"""All five levels: strides 2, 4, 8, 16 and 32."""


def refuse_classifier_settings(overrides: dict[str, object]) -> None:
    """Remove ``num_classes``, ``global_pool`` and ``drop_rate`` from a backbone's overrides, refusing any that
    asks for a classifier (a value other than 0 / ``''``).

    Raises:
        ValueError: (a :class:`~peffnet.errors.ConfigError`) naming the settings to drop.
    """
    given = {k: overrides.pop(k) for k in ("num_classes", "global_pool", "drop_rate") if k in overrides}
    wanted = ", ".join(f"{k}={v!r}" for k, v in given.items() if v not in (None, 0, 0.0, ""))
    if wanted:
        raise ConfigError(f"features_only builds no classifier: drop {wanted}")


class EfficientNetFeatures(nn.Module):
    """``stem`` -> ``stages`` (up to the last one a level asks for), returning a list of feature maps.

    ``feature_info`` is timm's :class:`~timm.models.FeatureInfo` of the levels returned: ``channels()``,
    ``reduction()`` (the stride) and ``module_name()`` (``stages.i``), one entry per map, in order.
    """

    def __init__(self, cfg: ModelConfig, out_indices: int | Sequence[int] = DEFAULT_OUT_INDICES) -> None:
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False
        self.stem, stages, levels = build_trunk(cfg)
        self.out_indices = take_indices(len(levels), out_indices)
        self.out_stages = [levels[i]["stage"] - 1 for i in self.out_indices]  # stage index of each map
        self.stages = stages[:self.out_stages[-1] + 1]
        self.feature_info = FeatureInfo(levels, self.out_indices)
        init_weights(self)
        self.pretrained_cfg = self.default_cfg = {k: v for k, v in data_config(cfg).items()
                                                  if k not in ("num_classes", "classifier")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            for block in stage:
                if self.grad_checkpointing and self.training and not torch.jit.is_scripting() \
                        and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            if i in self.out_stages:
                features.append(x)
        return features
