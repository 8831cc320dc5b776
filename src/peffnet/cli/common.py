"""Argument helpers shared by the subcommands (model overrides, integer parsing)."""

from __future__ import annotations

import argparse


def loose_int(text: str) -> int | str:
    """An int when ``text`` is one; otherwise the text, so the API's validation names the problem.

    This keeps CLI and Python API error messages identical (``group_size must be a positive integer,
    got '1.5'``) instead of argparse's generic ``invalid int value``.
    """
    try:
        return int(text)
    except ValueError:
        return text


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
