"""Shared helpers of the resolution-pipeline tests: tiny trained runs."""

from __future__ import annotations

from pathlib import Path

from peffnet.cli import main
from peffnet.data import FASHION_MNIST_DIR

# 16 synthetic images, 2 steps of 8 at 32 px, GN, expansion 1 (no block has an expansion conv: 0.8 M parameters,
# not 4.0), no stochastic regularizer: seconds on a CPU.
TINY_TRAIN = ["--model", "efficientnet_b0", "--norm", "gn", "--expansion", "1", "--data", "synthetic", "--subset",
              "16", "--val-subset", "8", "--batch-size", "8", "--resolution", "32", "--epochs", "1", "--no-progress",
              "--drop-rate", "0", "--drop-path-rate", "0", "--mixup-alpha", "0", "--cutmix-lambda", "1", "--lr", "0.01",
              "--warmup-epochs", "0", "--recipe-epochs", "0"]
SERVED_DATA = "fashion-mnist" if Path(FASHION_MNIST_DIR).is_dir() else "synthetic"
"""Fashion-MNIST when installed (grayscale, the real labels), else the synthetic set (RGB)."""
SERVED_EVAL_RESOLUTION = 64
"""Trained at 32, evaluated at 64: the recorded preprocessing resizes the canvas, as evaluation does."""
# 16 images, 2 steps of 8 at 32 px of G16-LN+PN (expansion 1), the model whose proxy norm is folded for serving.
TINY_SERVED = ["--model", "g16_efficientnet_b0", "--norm", "lnpn", "--expansion", "1", "--data", SERVED_DATA,
               "--subset", "16", "--val-subset", "8", "--batch-size", "8", "--resolution", "32", "--eval-resolution",
               str(SERVED_EVAL_RESOLUTION), "--epochs", "1", "--no-progress", "--drop-rate", "0", "--drop-path-rate",
               "0", "--mixup-alpha", "0", "--cutmix-lambda", "1", "--lr", "0.01", "--warmup-epochs", "0",
               "--recipe-epochs", "0"]
TINY_FINETUNE = ["--data", "synthetic", "--subset", "16", "--val-subset", "8", "--batch-size", "8", "--no-progress"]


def train_tiny(out: Path, args: list[str] = TINY_TRAIN) -> Path:
    """Train a tiny run (the parent run unless ``args`` are given) into ``out`` with ``peffnet train``; returns
    ``out``."""
    assert main(["train", *args, "--out", str(out)]) == 0
    return out
