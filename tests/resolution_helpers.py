"""Shared helpers of the resolution-pipeline tests: a tiny trained parent run."""

from __future__ import annotations

from pathlib import Path

from peffnet.cli import main

# 16 synthetic images, 2 steps of 8 at 32 px, GN, no stochastic regularizer: seconds on a CPU.
TINY_TRAIN = ["--model", "efficientnet_b0", "--norm", "gn", "--data", "synthetic", "--subset", "16", "--val-subset",
              "8", "--batch-size", "8", "--resolution", "32", "--epochs", "1", "--no-progress", "--drop-rate", "0",
              "--drop-path-rate", "0", "--mixup-alpha", "0", "--cutmix-lambda", "1", "--lr", "0.01",
              "--warmup-epochs", "0", "--recipe-epochs", "0"]
TINY_FINETUNE = ["--data", "synthetic", "--subset", "16", "--val-subset", "8", "--batch-size", "8", "--no-progress"]


def train_tiny(out: Path) -> Path:
    """Train the tiny parent run into ``out`` with ``peffnet train``; returns ``out``."""
    assert main(["train", *TINY_TRAIN, "--out", str(out)]) == 0
    return out
