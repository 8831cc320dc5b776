"""Mixup + CutMix, combined as in the authors' code, with strengths growing with model size (Section 3.4).

The paper follows Brock et al. (2021a) and mixes *both* ways in every batch: Mixup with a per-image
coefficient ``m ~ Beta(alpha, alpha)``, folded to ``max(m, 1 - m)`` so the original image stays the
foreground, pairs each image with its neighbour in the batch; then CutMix pastes one box (same aspect as
the image, fixed area fraction ``1 - lambda``, random position) from the image two places away. Labels
are mixed in the same proportions (the box's exact pixel share for CutMix). timm's ``Mixup`` cannot
express this (it picks one of the two per batch and draws CutMix's lambda from a Beta distribution), so
this module implements the authors' scheme directly.

Per-size strengths (docs/reference.md): Mixup alpha 0.1 for B0-B2 and 0.2 from B3; CutMix off at B0, lambda
0.95 at B1 falling to 0.8 at B5 (0.85 at B4 as in the authors' B4 config; B2/B3 interpolated; B6/B7
keep B5's values).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MIXUP_ALPHA = {"b0": 0.1, "b1": 0.1, "b2": 0.1, "b3": 0.2, "b4": 0.2, "b5": 0.2, "b6": 0.2, "b7": 0.2}
CUTMIX_LAMBDA = {"b0": 1.0, "b1": 0.95, "b2": 0.9, "b3": 0.85, "b4": 0.85, "b5": 0.8, "b6": 0.8, "b7": 0.8}
"""Fraction of each image CutMix keeps; 1.0 means no CutMix."""


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to a GPU through pinned memory, asynchronously (the host does not wait)."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def mix_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, mixup_alpha: float,
              cutmix_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed images and soft targets (rows sum to 1) of one batch; randomness from torch's global RNG.

    ``mixup_alpha <= 0`` turns Mixup off and ``cutmix_lambda >= 1`` turns CutMix off; with both off the
    targets are the one-hot labels.
    """
    targets = F.one_hot(labels, num_classes).to(torch.float32)
    n = images.shape[0]
    if mixup_alpha > 0 and n > 1:
        alpha = torch.tensor(float(mixup_alpha))
        m = torch.distributions.Beta(alpha, alpha).sample((n,))
        m = _to_device(torch.maximum(m, 1 - m), images.device)
        images = torch.lerp(images.roll(1, 0), images, m.to(images.dtype).view(-1, 1, 1, 1))
        targets = torch.lerp(targets.roll(1, 0), targets, m.view(-1, 1))
    if cutmix_lambda < 1 and n > 1:
        shift = 2 if n > 2 else 1
        h, w = images.shape[-2:]
        side = math.sqrt(1 - cutmix_lambda)
        bh, bw = round(h * side), round(w * side)
        y0 = int(torch.randint(0, h - bh + 1, ()))
        x0 = int(torch.randint(0, w - bw + 1, ()))
        images = images.clone()
        images[..., y0:y0 + bh, x0:x0 + bw] = images.roll(shift, 0)[..., y0:y0 + bh, x0:x0 + bw]
        kept = 1 - bh * bw / (h * w)
        targets = kept * targets + (1 - kept) * targets.roll(shift, 0)
    return images, targets
