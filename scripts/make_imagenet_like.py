"""Make an ImageNet-like JPEG folder for measuring and testing the image pipeline (docs/data.md).

    python scripts/make_imagenet_like.py OUT                       # 10 classes x (200 train + 50 val), ~100 KB each
    python scripts/make_imagenet_like.py OUT --classes 20 --train 150 --val 50 --seed 1 --workers 2

What the images are: :mod:`peffnet.data.photos` (photo-like content at ImageNet's file statistics, classes told
apart by palette, object shape and texture; deterministic from the seed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if (REPO / "src" / "peffnet").is_dir() and str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))  # run from the source tree without installing

from peffnet.data.photos import write_photo_folder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train", type=int, default=200, help="training images per class")
    parser.add_argument("--val", type=int, default=50, help="validation images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes")
    args = parser.parse_args(argv)
    if args.classes < 2 or args.train < 1 or args.val < 1:
        parser.error("need at least 2 classes and 1 image per split and class")
    made = write_photo_folder(args.out, args.classes, args.train, args.val, args.seed, args.workers)
    print(f"{made['images']} JPEGs in {args.out} ({args.classes} classes), mean {made['mean_bytes'] / 1e3:.0f} KB, "
          f"{made['seconds']:.0f} s ({made['images'] / made['seconds']:.0f} images/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
