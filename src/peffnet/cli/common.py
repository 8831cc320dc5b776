"""Running a training job from a subcommand: under torchrun only rank 0 reports; a run that cannot go on (a
NaN/inf loss, a checkpoint or log that cannot be written) is exit code 1 with one line, and a run stopped by a
signal exits with 128 + its number (143 SIGTERM, 130 SIGINT, 138 SIGUSR1) after one line saying where its
checkpoint is."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any


def run_and_report(command: str, job: Callable[[], dict[str, Any]], describe: Callable[[dict[str, Any]], str]) -> int:
    """Run a training ``job`` and print ``describe(summary)``; otherwise one line ``peffnet COMMAND: ...`` and
    exit code 1 (the run could not go on; its last checkpoint is kept) or 128 + N (stopped by signal N).
    Under torchrun only rank 0 prints."""
    from peffnet.errors import RunFailure
    from peffnet.training.signals import Stopped

    main_rank = os.environ.get("RANK", "0") == "0"
    message, code = None, 0
    try:
        summary = job()
    except Stopped as err:
        message, code = f"peffnet {command}: {err}", err.exit_code
    except RunFailure as err:  # a write failure too (peffnet.files)
        message, code = f"peffnet {command}: error: {err}", 1
    if message is not None:
        if main_rank:
            print(message, file=sys.stderr, flush=True)
        return code
    if main_rank:
        print(describe(summary))
    return 0
