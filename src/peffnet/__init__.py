"""peffnet: EfficientNet made practically efficient (Masters et al., "Making EfficientNet More Efficient").

Group convolutions (G-EfficientNet), proxy-normalized activations and half-resolution training.
``create_model`` builds the plain reference network; ``fuse_proxy_norm`` and ``fold_proxy_norm`` are the
passes that make its proxy norm fast for CPU training and for inference (docs/architecture.md).
"""

from __future__ import annotations

import os
import sys

if os.path.basename(sys.argv[0]) in ("peffnet", "-m"):  # launched as the command (`peffnet`, `python -m peffnet`)
    # OpenMP threads that spin while they wait make a run many times slower when another process wants the
    # cores (measured: benchmarks/bench_contention.py). It must be set before torch loads OpenMP; a user's
    # own choice is kept. As a library, peffnet leaves the process's settings alone.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from peffnet.errors import ConfigError  # noqa: E402
from peffnet.fusion import fold_proxy_norm, fuse_proxy_norm  # noqa: E402
from peffnet.layers.proxy_moments import proxy_norm_moments  # noqa: E402
from peffnet.models import EfficientNet, create_model, list_models  # noqa: E402
from peffnet.models.timm_compat import register as _register_timm  # noqa: E402
from peffnet.version import __version__  # noqa: E402

__all__ = ["ConfigError", "EfficientNet", "__version__", "create_model", "fold_proxy_norm", "fuse_proxy_norm",
           "list_models", "proxy_norm_moments"]

_register_timm()  # the presets as timm models: timm.create_model("peffnet_g16_efficientnet_b0", ...)
