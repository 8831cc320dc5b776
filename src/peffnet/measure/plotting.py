"""Figure helpers shared by ``peffnet report`` and ``peffnet roofline``: headless matplotlib, PNG + SVG."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from peffnet.files import write_file


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
        write_file(p, lambda f, p=p: fig.savefig(f, format=p.suffix[1:], dpi=120))
    pyplot().close(fig)
    return out


# Where a label may sit around its point (offset in points, alignment), tried in this order.
LABEL_SPOTS = ((5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"),
               (-5, -4, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"),
               (8, 0, "left", "center"), (-8, 0, "right", "center"))


def label_points(ax: Any, points: list[tuple[float, float, str]], fontsize: float = 7) -> None:
    """Write each point's label at the first spot of ``LABEL_SPOTS`` where it overlaps no label placed before,
    no other point and stays inside the axes (else at the spot with the fewest overlaps). Call it once the
    axes' scales and limits are final."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    centres = ax.transData.transform([(x, y) for x, y, _ in points])
    radius = 5 * fig.dpi / 72
    dots = [Bbox.from_bounds(cx - radius, cy - radius, 2 * radius, 2 * radius) for cx, cy in centres]
    frame = ax.get_window_extent(renderer)
    placed: list[Any] = []
    for i, (x, y, text) in enumerate(points):
        best: tuple[int, Any] | None = None
        for dx, dy, ha, va in LABEL_SPOTS:
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                ha=ha, va=va)
            box = label.get_window_extent(renderer)
            clashes = sum(box.overlaps(b) for b in placed) + sum(box.overlaps(d) for j, d in enumerate(dots) if j != i)
            clashes += 0 if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) else 1
            if best is None or clashes < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clashes, label)
            else:
                label.remove()
            if clashes == 0:
                break
        assert best is not None
        placed.append(best[1].get_window_extent(renderer))
