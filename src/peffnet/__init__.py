"""peffnet: EfficientNet made practically efficient (Masters et al., "Making EfficientNet More Efficient").

Group convolutions (G-EfficientNet), proxy-normalized activations and half-resolution training.
"""

from __future__ import annotations

from peffnet.errors import ConfigError
from peffnet.fusion import fold_proxy_norm, fuse_proxy_norm
from peffnet.layers.proxy_moments import proxy_norm_moments
from peffnet.models import EfficientNet, create_model, list_models

__version__ = "0.1.0"
__all__ = ["ConfigError", "EfficientNet", "__version__", "create_model", "fold_proxy_norm", "fuse_proxy_norm",
           "list_models", "proxy_norm_moments"]

try:  # timm is a dependency, but the models must not need it to import
    from peffnet.models.timm_compat import register as _register_timm
except ImportError:  # pragma: no cover
    pass
else:
    _register_timm()
