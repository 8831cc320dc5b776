"""Write Fashion-MNIST as an ImageNet-layout JPEG folder, to train through the image pipeline (docs/data.md).

    python scripts/make_fashion_mnist_folder.py OUT                  # 60 000 + 10 000 JPEGs, quality 95, ~1 min
    python scripts/make_fashion_mnist_folder.py OUT --quality 90 --data-dir /usr/share/datasets/fashion-mnist

``OUT/train/L_NAME/NNNNN.jpg`` and ``OUT/val/...`` (``val``: the official test set, as ``--data fashion-mnist``
uses it): each image as the in-memory set holds it, the 28 x 28 grayscale image centred on its 32 x 32 black
canvas (2 pixels around), so that ``--augment shift`` sees what the in-memory augmentation sees. Class folders
are named ``0_T-shirt-top`` ... ``9_Ankle-boot``: their sorted order is Fashion-MNIST's label order.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if (REPO / "src" / "peffnet").is_dir() and str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))  # run from the source tree without installing

import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from peffnet.data.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, fashion_mnist_arrays  # noqa: E402

PAD = 2
"""Black border around the 28 px image: the in-memory set's 32 px canvas."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--data-dir", default=FASHION_MNIST_DIR, help="folder of the idx files")
    args = parser.parse_args(argv)
    names = [f"{label}_{name.replace('/', '-').replace(' ', '-')}" for label, name in enumerate(FASHION_MNIST_CLASSES)]
    for split in ("train", "val"):
        images, labels = fashion_mnist_arrays(args.data_dir, split)
        canvases = F.pad(images, (PAD,) * 4)[:, 0].numpy()
        for name in names:
            (args.out / split / name).mkdir(parents=True, exist_ok=True)
        for i, (pixels, label) in enumerate(zip(canvases, labels.tolist(), strict=True)):
            path = args.out / split / names[label] / f"{i:05d}.jpg"
            Image.fromarray(pixels, mode="L").save(path, quality=args.quality)
        print(f"{split}: {len(labels)} images", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
