"""peffnet: EfficientNet made practically efficient (Masters et al., "Making EfficientNet More Efficient").

Group convolutions (G-EfficientNet), proxy-normalized activations and half-resolution training.
``create_model`` builds the plain reference network; ``fuse_proxy_norm`` and ``fold_proxy_norm`` are the
passes that make its proxy norm fast for CPU training and for inference (docs/architecture.md).
"""

from peffnet.errors import ConfigError
from peffnet.fusion import fold_proxy_norm, fuse_proxy_norm
from peffnet.layers.proxy_moments import proxy_norm_moments
from peffnet.models import EfficientNet, create_model, list_models
from peffnet.models.timm_compat import register as _register_timm
from peffnet.version import __version__

__all__ = ["ConfigError", "EfficientNet", "__version__", "create_model", "fold_proxy_norm", "fuse_proxy_norm",
           "list_models", "proxy_norm_moments"]

_register_timm()  # the presets as timm models: timm.create_model("peffnet_g16_efficientnet_b0", ...)
