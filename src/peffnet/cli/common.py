"""Helpers shared by the subcommands: model overrides, lenient number parsing, the default device, and
running a training job under torchrun (only rank 0 reports)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from peffnet.errors import ConfigError


def loose_int(text: str) -> int | str:
    """An int when ``text`` is one; otherwise the text, so the API's validation names the problem.

    This keeps CLI and Python API error messages identical (``group_size must be a positive integer,
    got '1.5'``) instead of argparse's generic ``invalid int value``.
    """
    try:
        return int(text)
    except ValueError:
        return text


def loose_float(text: str) -> float | str:
    """A float when ``text`` is one; otherwise the text, so the config's validation names the problem."""
    try:
        return float(text)
    except ValueError:
        return text


def batch_size_or_max(text: str) -> int | str:
    """``--batch-size`` of the measuring commands: an integer or ``max`` (range checked by the benchmark)."""
    if text == "max":
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"batch size must be a positive integer or 'max', got {text!r}") from None


def default_device(name: str | None) -> str:
    """``--device`` of the measuring commands: as given, else ``cuda`` when available, else ``cpu``."""
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def add_model_args(parser: argparse.ArgumentParser, with_model: bool = True) -> None:
    """``MODEL`` plus the builder overrides every model-taking command accepts."""
    if with_model:
        parser.add_argument("model", help="model name (see `peffnet models`)")
    g = parser.add_argument_group("model overrides")
    g.add_argument("--group-size", type=loose_int, help="group size G of the spatial convs (default: preset's)")
    g.add_argument("--expansion", type=loose_int, help="expansion ratio E (default: preset's)")
    g.add_argument("--norm", help="normalization: bn, gn, ln, lnpn, gnpn (default: bn)")


def model_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The overrides the user set, ready for :func:`peffnet.create_model`."""
    keys = ("group_size", "expansion", "norm", "num_classes", "in_chans", "drop_rate", "drop_path_rate")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def run_and_report(command: str, job: Callable[[], dict[str, Any]], describe: Callable[[dict[str, Any]], str]) -> int:
    """Run a training ``job`` and print ``describe(summary)``; exit code 1 with ``peffnet COMMAND: error: ...``
    when the loss became NaN/inf (the last good checkpoint is kept). Under torchrun only rank 0 prints."""
    from peffnet.training.loop import NonFiniteLoss

    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        summary = job()
    except NonFiniteLoss as err:
        if main_rank:
            print(f"peffnet {command}: error: {err}", file=sys.stderr)
        return 1
    if main_rank:
        print(describe(summary))
    return 0
