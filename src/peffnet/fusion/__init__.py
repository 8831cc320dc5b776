"""Passes over a plain model: the fused CPU training form and the folded inference form of proxy norm.

:func:`fuse_proxy_norm` (training, exact, in place) and :func:`fold_proxy_norm` (inference, eval mode, in
place) both take the plain model :func:`peffnet.create_model` builds (paper Section 3.2, Eq. 4).
"""

from peffnet.fusion.fold import fold_proxy_norm
from peffnet.fusion.fuse import fuse_proxy_norm, training_form

__all__ = ["fold_proxy_norm", "fuse_proxy_norm", "training_form"]
