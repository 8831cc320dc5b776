"""Print the paper's Table 2 next to peffnet's parameter and MAC counts (markdown).

    python scripts/table2.py > /tmp/table2.md

Counts come from peffnet.models.profile (conv + linear multiply-accumulates, one image, native resolution,
GN as in the paper's Table 2), computed on the meta device.
"""

from __future__ import annotations

import torch

from peffnet.models import build, preset
from peffnet.models.profile import profile_model

# (size, G, E, params M, FLOPs G) as printed in the paper's Table 2.
PAPER = [
    ("b0", 1, 6, 5.3, 0.4), ("b0", 4, 5, 5.1, 0.4), ("b0", 16, 4, 5.9, 0.6), ("b0", 32, 3, 6.2, 0.9),
    ("b0", 64, 2, 6.7, 1.5), ("b1", 1, 6, 7.8, 0.7), ("b1", 16, 4, 8.3, 1.1), ("b2", 1, 6, 9.1, 1.0),
    ("b2", 4, 5, 8.6, 1.0), ("b2", 16, 4, 9.5, 1.5), ("b2", 32, 3, 10.3, 2.1), ("b2", 64, 2, 9.9, 3.6),
    ("b3", 1, 6, 12.2, 1.8), ("b3", 16, 4, 12.6, 2.7), ("b4", 1, 6, 19.3, 4.4), ("b4", 16, 4, 19.3, 6.2),
    ("b5", 1, 6, 30.4, 10.2), ("b5", 16, 4, 28.7, 13.4),
]


def main() -> None:
    print("| size | G | E | params paper (M) | params ours (M) | MACs paper (G) | MACs ours (G) | MACs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for size, g, e, params, macs in PAPER:
        cfg = preset(f"efficientnet_{size}", group_size=g, expansion=e, norm="gn")
        with torch.device("meta"):
            prof = profile_model(build(cfg), cfg.resolution)
        diff = (prof.macs / 1e9 - macs) / macs * 100
        print(f"| {size.upper()} | {g} | {e} | {params} | {prof.params / 1e6:.3f} | {macs} | {prof.macs / 1e9:.3f} "
              f"| {diff:+.1f} % |")


if __name__ == "__main__":
    main()
