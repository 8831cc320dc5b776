"""Figure helpers shared by ``peffnet report`` and ``peffnet roofline``: headless matplotlib, PNG + SVG."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed; imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> list[Path]:
    """Lay out ``fig``, write it as ``path``.png and ``path``.svg (120 dpi), close it; returns both paths."""
    fig.tight_layout()
    out = [path.with_suffix(".png"), path.with_suffix(".svg")]
    for p in out:
        fig.savefig(p, dpi=120)
    pyplot().close(fig)
    return out
