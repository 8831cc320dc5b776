"""Shared helpers of the training tests: tiny runs and tiny generated image folders."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook

from peffnet.checkpoint import load_checkpoint

# A run small enough for a unit test: 32 synthetic images, 4 steps of 8 per epoch, 32 px, GN, B0 with expansion 1
# (0.8 M parameters, not 4.0: the run takes half the time), no stochastic regularizer (so results do not depend on
# how a batch is split).
TINY = ["--model", "efficientnet_b0", "--norm", "gn", "--expansion", "1", "--data", "synthetic", "--subset", "32",
        "--val-subset", "16", "--batch-size", "8", "--resolution", "32", "--no-progress", "--drop-rate", "0",
        "--drop-path-rate", "0", "--mixup-alpha", "0", "--cutmix-lambda", "1", "--lr", "0.003", "--warmup-epochs",
        "0.5", "--head-init-scale", "0", "--recipe-epochs", "0"]


def tiny_args(out: Path, *extra: str, epochs: int = 1) -> list[str]:
    """``peffnet train`` arguments of a tiny deterministic run into ``out``."""
    return ["train", *TINY, "--epochs", str(epochs), "--out", str(out), *extra]


def final_weights(run_dir: Path, key: str = "model") -> dict[str, torch.Tensor]:
    """The live (``model``) or averaged weights stored in a run's checkpoint."""
    return load_checkpoint(run_dir / "checkpoint.pt")[key]


@contextlib.contextmanager
def after_update(at: int, action: Callable[[torch.optim.Optimizer], None]) -> Iterator[None]:
    """While active, call ``action(optimizer)`` once, right after the ``at``-th optimizer update (counted from
    here) of any run in this process: PyTorch's hook on every optimizer, the run's own code untouched."""
    updates = []

    def hook(optimizer: torch.optim.Optimizer, *_: object) -> None:
        updates.append(optimizer)
        if len(updates) == at:
            action(optimizer)

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def make_image_folder(root: Path, classes: dict[str, int], size: int = 40, splits: tuple[str, ...] = ("train", "val"),
                      ) -> Path:
    """``root/SPLIT/CLASS/i.png`` with ``classes[CLASS]`` random RGB images each (seeded)."""
    rng = np.random.default_rng(0)
    for split in splits:
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root
