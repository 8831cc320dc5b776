"""Data: the dataset specs (``fashion-mnist``, ``synthetic``, ``imagefolder:PATH``, ``shards:DIR``) and resumable
loaders."""

from peffnet.data.datasets import (
    DEFAULT_TRANSLATE,
    FASHION_MNIST_DIR,
    SMALL_IMAGE_RESOLUTION,
    TensorImageDataset,
    build_dataset,
    default_resolution,
    in_memory,
    parse_spec,
)
from peffnet.data.images import AUGMENTS
from peffnet.data.loader import DECODE_MODES, Loader, make_loader

__all__ = ["AUGMENTS", "DECODE_MODES", "DEFAULT_TRANSLATE", "FASHION_MNIST_DIR", "SMALL_IMAGE_RESOLUTION", "Loader",
           "TensorImageDataset", "build_dataset", "default_resolution", "in_memory", "make_loader", "parse_spec"]
