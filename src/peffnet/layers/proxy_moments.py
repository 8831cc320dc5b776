"""Exact Gaussian moments of an activation, for proxy normalization (paper Eq. 4).

Eq. 4 divides ``phi(gamma Y + beta)`` by the moments of ``phi(U)`` with ``U = gamma Ỹ + beta``,
``Ỹ ~ N(beta~, (1 + gamma~)^2)``, i.e. ``U ~ N(mu, sigma^2)`` with ``mu = gamma beta~ + beta`` and
``sigma = |gamma (1 + gamma~)|``. Two quadrature rules, picked per channel:

* ``sigma <= 1.25``: Gauss-Hermite in the standardized variable, ``E f(U) = sum_i w_i f(mu + sigma x_i)``;
  ``f(mu + sigma x)`` is smooth on the scale of the nodes, so 16 nodes suffice.
* ``sigma > 1.25``: the bend of ``phi`` near 0 becomes narrower than the node spacing and plain Gauss-Hermite
  converges slowly (for ReLU it never does). We split ``phi = relu + r``: the moments of ``relu(U)`` are
  closed form, and the residual ``r = phi - relu`` decays like ``exp(-|u|)`` (swish) or faster (gelu), so its
  integrals against the Gaussian density on each half-line are Gauss-Laguerre sums in ``u`` (16 nodes).

ReLU uses the closed form for every sigma. ``scripts/pn_quadrature.py`` measures the error against
``scipy.integrate.quad`` and is how the node counts and the switch point were picked: the worst error over
the parameter box of :func:`proxy_norm_moments` is 4 % of its tolerance, ``max(1e-3, 1 % of the exact value)``.
The authors used 200 fixed normal quantiles instead (docs/reference.md).

The moments cost O(channels) and never see the batch. They are one :class:`torch.autograd.Function` with
hand-written gradients (the same quadratures applied to ``phi'``): B0 has 33 PN layers, and the per-op
overhead of recording dozens of tiny autograd ops per layer would otherwise dominate their cost.
TorchScript cannot run such a Function: :func:`proxy_affine_ops` is the same quadrature as plain
differentiable ops, which :class:`~peffnet.layers.proxy_norm.ProxyNormAct2d` uses when scripted. The
quadrature itself (:func:`_quadrature` and the helpers it calls) is written so that TorchScript compiles it:
no globals but functions (TorchScript reads none), which is why a few constants appear as literals there.
"""

import math
from collections.abc import Callable
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

HERMITE_NODES = 16  # node counts and SIGMA_SPLIT chosen with scripts/pn_quadrature.py
LAGUERRE_NODES = 16
SIGMA_SPLIT = 1.25  # sigma above which the relu + residual rule is used
_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)  # also a literal in the TorchScript-compiled functions below
# exp() of arguments below this gives denormals or underflows, which CPUs compute many times slower; the
# terms it drops are below e^-80 < 2e-35 of the moments.
_EXP_FLOOR = -80.0


def _ndtr(t: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF via ``erfc`` (``torch.special.ndtr`` is slower on CPU)."""
    return 0.5 * torch.special.erfc(t * -0.7071067811865475)  # -1/sqrt(2) (a literal: module docstring)


def _swish(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.sigmoid(u)
    f = u * s
    return f, s + f * (1 - s)


def _gelu(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = _ndtr(u)
    # literals: _EXP_FLOOR, _INV_SQRT_2PI (module docstring)
    return u * c, c + u * torch.exp((-0.5 * u * u).clamp_min_(-80.0)) * 0.3989422804014327


def _phi(act: str, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``phi(u)`` and ``phi'(u)`` of a smooth activation (``ACTIVATIONS`` by name, as TorchScript can call it)."""
    if act == "gelu":
        return _gelu(u)
    return _swish(u)


# name -> phi(u) and phi'(u); None marks ReLU, whose moments are closed form.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None] = {
    "swish": _swish,
    "silu": _swish,
    "gelu": _gelu,
    "relu": None,
}


def _build_tables(act: str, n_hermite: int, n_laguerre: int) -> tuple[list, ...]:
    """Quadrature tables in float64 (as nested lists, so compiled graphs take them as constants).

    Gauss-Hermite: nodes ``x`` (K,) and weights ``[w, w x, 2 w, 2 w x]`` (4, K). Gauss-Laguerre on both
    half-lines, nodes ``V = [v, -v]`` (2L,): powers ``[1, V, V^2]`` (2L, 3) and ``[A, V A, V^2 A]^T`` (6, 2L),
    where ``A`` (2L, 2) is the weight ``w_k e^{v_k} / sqrt(2 pi)`` times the residuals ``phi - relu`` and
    ``phi^2 - relu^2`` at the node. Channels run along the last (contiguous) dim of every product.
    """
    x, w = np.polynomial.hermite_e.hermegauss(n_hermite)
    w = w / w.sum()
    v, wl = np.polynomial.laguerre.laggauss(n_laguerre)
    phi = ACTIVATIONS[act] or (lambda u: (F.relu(u), None))
    f_pos, f_neg = (phi(torch.from_numpy(t))[0].numpy() for t in (v, -v))
    r_pos = f_pos - v  # phi - relu on u > 0; on u < 0 relu is 0 and the residual is phi itself
    lv = np.concatenate([v, -v])
    a = np.stack([np.concatenate([r_pos, f_neg]), np.concatenate([r_pos * (f_pos + v), f_neg * f_neg])], 1)
    a = a * (np.concatenate([wl * np.exp(v)] * 2) * _INV_SQRT_2PI)[:, None]
    b = np.concatenate([a, lv[:, None] * a, lv[:, None] ** 2 * a], 1)
    # Drop nodes that cannot matter: a Laguerre row below 1e-8 moves a moment by < 1e-8 (the Gaussian
    # density is < 0.4), a Hermite weight below 1e-9 by < 1e-9 f^2 (f^2 < 400 in the parameter box).
    keep_l, keep_h = np.abs(b).max(1) > 1e-8, w > 1e-9
    x, w, lv, b = x[keep_h], w[keep_h], lv[keep_l], b[keep_l]
    tables = (x, np.stack([w, w * x, 2 * w, 2 * w * x]), np.stack([lv ** 0, lv, lv ** 2], 1), b.T)
    return tuple(t.tolist() for t in tables)


_TABLES = {(act, HERMITE_NODES, LAGUERRE_NODES): _build_tables(act, HERMITE_NODES, LAGUERRE_NODES)
           for act in ACTIVATIONS}
_TENSORS: dict[tuple, tuple[torch.Tensor, ...]] = {}
# (quantity, weight) pairs of [f, f^2, f', f f'] x [w, w x, 2 w, 2 w x] -> E, E2, dE/dmu, dE2/dmu, dE/ds, dE2/ds
_GH_COLUMNS = [0, 4, 8, 14, 9, 15]


def _constants(act: str, n_hermite: int, n_laguerre: int, dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, ...]:
    """The tables of :func:`_build_tables` as tensors (cached per dtype and device in eager mode)."""
    key = (act, n_hermite, n_laguerre)
    if key not in _TABLES:
        _TABLES[key] = _build_tables(*key)
    compiling = torch.compiler.is_compiling()
    if not compiling and (*key, dtype, device) in _TENSORS:
        return _TENSORS[(*key, dtype, device)]
    tensors = (*(torch.tensor(t, dtype=dtype, device=device) for t in _TABLES[key]),
               torch.tensor(_GH_COLUMNS, device=device))
    if not compiling:
        _TENSORS[(*key, dtype, device)] = tensors
    return tensors


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in the inputs' precision even under autocast (eager; TorchScript has no autocast here)."""
    if torch.jit.is_scripting():
        return torch.matmul(a, b)
    else:  # TorchScript compiles the branch above only (it decides ``is_scripting()`` when compiling)
        if a.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(a.device.type):
            with torch.autocast(a.device.type, enabled=False):
                return torch.matmul(a, b)
        return torch.matmul(a, b)


def _quadrature(act: str, mu: torch.Tensor, sigma: torch.Tensor, x: torch.Tensor, w_gh: torch.Tensor,
                powers: torch.Tensor, b: torch.Tensor, index: torch.Tensor, split_at: float) -> torch.Tensor:
    """Rows ``[E, E2, dE/dmu, dE2/dmu, dE/dsigma, dE2/dsigma]`` (6, C) of ``phi(U)``, ``U ~ N(mu, sigma^2)``,
    ``E2 = E[phi(U)^2]``; 1-D inputs, ``sigma >= 0``, the tables of :func:`_constants`, the rule switching at
    ``sigma = split_at``. Derivatives come from the same quadratures."""
    # relu(U) in closed form: dE/dmu = cdf, dE/ds = pdf, dE2/dmu = 2 E, dE2/ds = 2 s cdf
    s = sigma.clamp_min(split_at if act != "relu" else 1e-12)  # the clamp keeps the unused rule finite
    inv = s.reciprocal()
    t = mu * inv
    cdf = _ndtr(t)
    pdf = torch.exp((-0.5 * t * t).clamp_min_(-80.0)) * 0.3989422804014327  # _EXP_FLOOR, _INV_SQRT_2PI
    e1 = torch.addcmul(s * pdf, mu, cdf)
    e2 = torch.addcmul(mu * s * pdf, torch.addcmul(s * s, mu, mu), cdf)
    split = torch.stack([e1, e2, cdf, 2 * e1, pdf * (sigma >= s), 2 * s * cdf])
    if act == "relu":
        return split
    # Residual phi - relu by Gauss-Laguerre. exp(-z^2 / 2), z = (V - mu) / s, is one rank-3 product, and
    # with m_j = sum_k exp(-z_k^2 / 2) V_k^j A_k: r = m_0 / s, dr/dmu = sum e z A / s^2 = (m_1 - mu m_0) / s^3,
    # dr/ds = sum e (z^2 - 1) A / s^2 = ((m_2 - 2 mu m_1 + mu^2 m_0) / s^2 - m_0) / s^2.
    q = inv * inv
    e = _mm(powers, torch.stack([-0.5 * mu * mu * q, mu * q, -0.5 * q])).clamp_min_(-80.0).exp_()  # _EXP_FLOOR
    m0, m1, m2 = _mm(b, e).view(3, 2, -1).unbind(0)  # each (2, C): first and second moment
    r_mu = (m1 - mu * m0) * (q * inv)
    r_s = ((m2 - 2 * mu * m1 + mu * mu * m0) * q - m0) * q
    split = split + torch.cat([m0 * inv, r_mu, r_s])
    # Gauss-Hermite: dE/dmu = E[phi'], dE/dsigma = E[phi' x], likewise for phi^2 with 2 phi phi'
    f, df = _phi(act, torch.addcmul(mu, x[:, None], sigma.clamp_max(split_at)))  # (K, C)
    gh = _mm(w_gh, torch.stack([f, f * f, df, f * df])).view(16, -1).index_select(0, index)
    return torch.where(sigma <= split_at, gh, split)


def _moments(act: str, mu: torch.Tensor, sigma: torch.Tensor, nodes: tuple[int, int]) -> torch.Tensor:
    """:func:`_quadrature` with ``nodes`` (Gauss-Hermite, Gauss-Laguerre) nodes and the cached tables."""
    return _quadrature(act, mu, sigma, *_constants(act, *nodes, mu.dtype, mu.device), SIGMA_SPLIT)


class _ProxyMoments(torch.autograd.Function):
    """``(gamma, beta, gamma~, beta~) -> (E, Var)`` of ``phi(gamma Ỹ + beta)``, 1-D inputs; with ``eps`` given,
    Eq. 4's affine ``(1 / sqrt(Var + eps), -E / sqrt(Var + eps))`` instead.

    The forward computes the moments and their derivatives in one pass without autograd; the backward
    is the chain rule through ``mu = gamma beta~ + beta`` and ``sigma = |gamma (1 + gamma~)|``. One node
    instead of dozens of recorded ops: per-op overhead, not arithmetic, is what the moments cost.
    """

    @staticmethod
    def forward(ctx, gamma, beta, gamma_tilde, beta_tilde, act: str, nodes: tuple[int, int], eps: float | None):
        mu = torch.addcmul(beta, gamma, beta_tilde)
        sd = torch.addcmul(gamma, gamma, gamma_tilde)
        m = _moments(act, mu, sd.abs(), nodes)
        mean = m[0]
        var = (m[1] - mean * mean).clamp_min(0)
        scale = None if eps is None else torch.rsqrt(var + eps)
        ctx.save_for_backward(gamma, gamma_tilde, beta_tilde, sd, mean, m[2:], scale)
        return (mean, var) if eps is None else (scale, -mean * scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad0, grad1):
        gamma, gamma_tilde, beta_tilde, sd, mean, d, scale = ctx.saved_tensors
        if scale is None:
            grad_mean, grad_var = grad0, grad1
        else:  # scale = (Var + eps)^-1/2, shift = -E scale
            grad_mean = -scale * grad1
            grad_var = -0.5 * scale ** 3 * (grad0 - mean * grad1)
        g1 = grad_mean - 2 * mean * grad_var  # gradient w.r.t. E, then w.r.t. E2 (Var = E2 - E^2)
        d_mu = g1 * d[0] + grad_var * d[1]
        d_sd = (g1 * d[2] + grad_var * d[3]) * torch.sign(sd)
        return (torch.addcmul(d_mu * beta_tilde, d_sd, 1 + gamma_tilde), d_mu, d_sd * gamma, d_mu * gamma,
                None, None, None)


def proxy_affine(act: str, gamma: torch.Tensor, beta: torch.Tensor, gamma_tilde: torch.Tensor,
                 beta_tilde: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 as a per-channel affine of ``phi(gamma y + beta)``: ``(scale, shift)`` with
    ``scale = 1 / sqrt(Var + eps)`` and ``shift = -E scale``; 1-D parameters, float32 or wider."""
    if gamma.dtype not in (torch.float32, torch.float64):
        gamma, beta, gamma_tilde, beta_tilde = (t.float() for t in (gamma, beta, gamma_tilde, beta_tilde))
    return _ProxyMoments.apply(gamma, beta, gamma_tilde, beta_tilde, act, (HERMITE_NODES, LAGUERRE_NODES), eps)


_SWISH = _TABLES[("swish", HERMITE_NODES, LAGUERRE_NODES)]
SWISH_TABLE = torch.tensor([v for t in _SWISH for v in np.ravel(t)], dtype=torch.float64)
"""The swish tables of :func:`_build_tables` as one flat float64 tensor, for :func:`proxy_affine_ops` (TorchScript
turns a constant list of floats into a tensor through float32, so the tables travel as a tensor)."""
SWISH_TABLE_SIZES: Final = (len(_SWISH[0]), len(_SWISH[2]))
"""Its Gauss-Hermite and (two-sided) Gauss-Laguerre node counts."""


def proxy_affine_ops(gamma: torch.Tensor, beta: torch.Tensor, gamma_tilde: torch.Tensor, beta_tilde: torch.Tensor,
                     eps: float, table: torch.Tensor, sizes: tuple[int, int],
                     split_at: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`proxy_affine` for swish as plain differentiable ops, for TorchScript (which cannot run the autograd
    Function): the same quadrature (``table``: :data:`SWISH_TABLE`, ``sizes``: :data:`SWISH_TABLE_SIZES`,
    ``split_at``: :data:`SIGMA_SPLIT`), gradients by autograd through it, the same values up to float rounding."""
    dtype = torch.float64 if gamma.dtype == torch.float64 else torch.float32
    gamma, beta, gamma_tilde, beta_tilde = gamma.to(dtype), beta.to(dtype), gamma_tilde.to(dtype), beta_tilde.to(dtype)
    table = table.to(device=gamma.device, dtype=dtype)
    k, l2 = sizes
    x, w_gh = table[:k], table[k:5 * k].view(4, k)
    powers, b = table[5 * k:5 * k + 3 * l2].view(l2, 3), table[5 * k + 3 * l2:].view(6, l2)
    index = torch.tensor([0, 4, 8, 14, 9, 15], device=gamma.device)  # _GH_COLUMNS
    mu = torch.addcmul(beta, gamma, beta_tilde)
    sigma = torch.addcmul(gamma, gamma, gamma_tilde).abs()
    m = _quadrature("swish", mu, sigma, x, w_gh, powers, b, index, split_at)
    var = (m[1] - m[0] * m[0]).clamp_min(0)
    scale = torch.rsqrt(var + eps)
    return scale, -m[0] * scale


def swish_proxy_affine(gamma: torch.Tensor, beta: torch.Tensor, gamma_tilde: torch.Tensor, beta_tilde: torch.Tensor,
                       eps: float, table: torch.Tensor, sizes: tuple[int, int],
                       split_at: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4's affine for swish as one call that both Python and TorchScript run: :func:`proxy_affine` (one
    autograd node) in Python, :func:`proxy_affine_ops` (which takes ``table``, ``sizes`` and ``split_at``) when
    compiled by TorchScript. It is the leaf call that ``torch.fx`` records for a proxy norm, so a traced model
    runs exactly like the eager one and also scripts."""
    if torch.jit.is_scripting():  # TorchScript compiles this branch only
        return proxy_affine_ops(gamma, beta, gamma_tilde, beta_tilde, eps, table, sizes, split_at)
    return proxy_affine("swish", gamma, beta, gamma_tilde, beta_tilde, eps)


def proxy_norm_moments(
    act: str,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    gamma_tilde: torch.Tensor,
    beta_tilde: torch.Tensor,
    *,
    nodes: tuple[int, int] = (HERMITE_NODES, LAGUERRE_NODES),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``phi(gamma Ỹ + beta)`` with ``Ỹ ~ N(beta~, (1 + gamma~)^2)`` (Eq. 4).

    Args:
        act: ``"swish"`` (alias ``"silu"``), ``"gelu"`` (erf form) or ``"relu"``.
        gamma, beta, gamma_tilde, beta_tilde: per-channel parameters (broadcastable tensors).
        nodes: Gauss-Hermite and Gauss-Laguerre node counts (the defaults meet the accuracy below).

    Returns:
        ``(mean, var)`` shaped like the broadcast of the inputs, in float32 or wider, differentiable in
        all four parameters. Within 1e-3 absolute or 1 % relative of the exact Gaussian expectation for
        gamma in [0.1, 5], beta in [-3, 3], gamma~ in [-0.5, 1], beta~ in [-1, 1] (``tests/test_proxy_norm.py``).

    Raises:
        ValueError: unknown ``act``.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r} for proxy normalization; choose swish, gelu or relu")
    dtype = torch.promote_types(gamma.dtype, torch.float32)
    gamma, beta, gamma_tilde, beta_tilde = torch.broadcast_tensors(
        *(t.to(dtype) for t in (gamma, beta, gamma_tilde, beta_tilde)))
    shape = gamma.shape
    mean, var = _ProxyMoments.apply(*(t.reshape(-1) for t in (gamma, beta, gamma_tilde, beta_tilde)), act,
                                    tuple(nodes), None)
    return mean.view(shape), var.view(shape)
