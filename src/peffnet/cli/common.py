"""Running a training job from a subcommand: under torchrun only rank 0 reports, and a NaN/inf loss is exit
code 1 with one line (the last good checkpoint is kept)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any


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
