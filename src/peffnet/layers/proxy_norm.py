"""Proxy-normalized activations (paper Section 3.2, Eq. 3-4; Labatie et al., 2021).

After a batch-independent normalization (LN, Eq. 3, or GN) of the pre-activations ``Y``, Eq. 4 applies

    Z_c = (phi(gamma_c Y_c + beta_c) - E[phi(gamma_c Ỹ_c + beta_c)]) / sqrt(Var[phi(gamma_c Ỹ_c + beta_c)] + eps~)

with the Gaussian *proxy* ``Ỹ_c ~ N(beta~_c, (1 + gamma~_c)^2)``. The proxy moments depend on the four
per-channel parameters only, never on the batch or the resolution: they cost O(channels) per forward
(:func:`peffnet.layers.proxy_moments.proxy_affine`) and, in eval mode, are computed once and cached.

This is the plain reference layer (what ``torch.compile`` and CUDA training run). The CPU-fast training
form is :func:`peffnet.fusion.fuse_proxy_norm`, the inference form :func:`peffnet.fusion.fold_proxy_norm`.

The layer also traces and scripts: under ``torch.fx`` symbolic tracing the moments are one leaf call of
:func:`~peffnet.layers.proxy_moments.swish_proxy_affine` (computed on every call of the traced graph), and under
TorchScript they are :func:`~peffnet.layers.proxy_moments.proxy_affine_ops`, the same quadrature as plain ops
(also when a traced layer is scripted: the leaf call compiles to it). Neither uses the eval cache.
"""

import torch
import torch.nn.functional as F
from torch import nn

from peffnet.layers.normalization import NORM_EPS, group_norm
from peffnet.layers.proxy_moments import SIGMA_SPLIT, SWISH_TABLE, SWISH_TABLE_SIZES, swish_proxy_affine

PROXY_EPS = 3e-2  # eps~ of Eq. 4 (paper Section 3.4; docs/reference.md)
torch.fx.wrap("swish_proxy_affine")  # symbolic tracing records the moments as one call instead of tracing into them
torch.fx.wrap("group_norm")  # and the norm's dtype test as one call (layers.normalization)


def _values_key(t: torch.Tensor) -> tuple:
    """Identifies ``t``'s current values for a cache: storage, version counter (bumped by every in-place
    update) and dtype. An inference tensor has no version counter (``None``): do not cache on it."""
    return t.data_ptr(), None if t.is_inference() else t._version, t.dtype


class ProxyNormAct2d(nn.Module):
    """Batch-independent normalization followed by a proxy-normalized swish (Eq. 3-4).

    ``groups=1`` is LN over (C, H, W) of each image (Eq. 3), ``groups=4`` is GN; the normalization has no
    affine of its own (eps 1e-3). The layer owns Eq. 4's ``gamma`` (``weight``), ``beta`` (``bias``),
    ``gamma~`` (``proxy_weight``) and ``beta~`` (``proxy_bias``), the tilde parameters initialised to 0 (and
    weight-decayed by :func:`peffnet.training.optim.param_groups`), eps~ 3e-2.

    Forward: ``a = swish(group_norm(x) * gamma + beta)`` (``gamma``/``beta`` passed to ``group_norm`` as its
    affine), then Eq. 4 as the per-channel affine ``a * scale + shift`` with ``(scale, shift) =``
    :meth:`proxy_affine`. In eager eval mode (without gradients to the parameters) that affine is computed once
    and cached until a parameter changes: the cache is keyed on each parameter's storage and version counter,
    and dropped by ``train()``/``eval()`` and ``load_state_dict``. Edits through ``param.data`` bypass
    version counters: call :meth:`clear_cache`.
    """

    # what proxy_affine_ops needs under TorchScript, as constants of a scripted module
    __constants__ = ["quadrature_sizes", "quadrature_split"]
    quadrature_sizes = SWISH_TABLE_SIZES
    quadrature_split = SIGMA_SPLIT

    def __init__(self, channels: int, groups: int = 1, eps: float = NORM_EPS, proxy_eps: float = PROXY_EPS) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels cannot be split into {groups} normalization groups")
        self.channels, self.groups = channels, groups
        self.eps, self.proxy_eps = eps, proxy_eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.proxy_weight = nn.Parameter(torch.zeros(channels))
        self.proxy_bias = nn.Parameter(torch.zeros(channels))
        self._cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        self.quadrature = SWISH_TABLE  # a plain attribute (no state_dict entry): proxy_affine_ops's table

    def _proxy_parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.weight, self.bias, self.proxy_weight, self.proxy_bias

    def caches_affine(self) -> bool:
        """Whether :meth:`proxy_affine` serves this call from (or into) the eval cache: eval mode without
        gradients to the parameters, so the affine is a constant. Never while compiling or tracing, on the meta
        device, or on inference tensors (parameters made under ``torch.inference_mode`` have no version counter)."""
        if isinstance(self.weight, torch.fx.Proxy):  # symbolic tracing: the traced graph has no cache
            return False
        params = self._proxy_parameters()
        return (not self.training and not self.weight.is_meta and not torch.compiler.is_compiling()
                and not any(p.is_inference() for p in params)
                and not (torch.is_grad_enabled() and any(p.requires_grad for p in params)))

    def proxy_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4 as a per-channel affine of ``a = swish(gamma y + beta)``: ``(scale, shift)`` with
        ``scale = 1 / sqrt(Var + eps~)`` and ``shift = -E * scale`` (float32 or wider), from the eval cache
        when :meth:`caches_affine`, else computed (differentiable in all four parameters)."""
        if torch.jit.is_scripting():  # TorchScript compiles this branch only: plain ops, no cache
            return self._compute_affine()
        if not self.caches_affine():
            return self._compute_affine()
        key = (torch.is_inference_mode_enabled(), *map(_values_key, self._proxy_parameters()))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *self._compute_affine())
        return self._cache[1], self._cache[2]

    def _compute_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine computed, not cached: one leaf call under ``torch.fx``, plain ops under TorchScript."""
        return swish_proxy_affine(self.weight, self.bias, self.proxy_weight, self.proxy_bias, self.proxy_eps,
                                  self.quadrature, self.quadrature_sizes, self.quadrature_split)

    def clear_cache(self) -> None:
        """Forget the cached eval-mode moments (needed only after edits through ``param.data``)."""
        self._cache = None

    def train(self, mode: bool = True) -> "ProxyNormAct2d":
        self.clear_cache()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = group_norm(x, self.groups, self.weight, self.bias, self.eps)  # gamma Y + beta
        a = F.silu(y, inplace=True)  # phi(gamma Y + beta); in place: y is group_norm's fresh output
        scale, shift = self.proxy_affine()
        return torch.addcmul(shift.to(a.dtype).view(-1, 1, 1), a, scale.to(a.dtype).view(-1, 1, 1))  # Eq. 4

    def extra_repr(self) -> str:
        return f"{self.channels}, groups={self.groups}, eps={self.eps}, proxy_eps={self.proxy_eps}"
