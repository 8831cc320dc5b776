"""Measure the error of the proxy-moment quadrature (Eq. 4) against scipy's adaptive quadrature.

For each node count n, the moments of phi(U), U ~ N(mu, sigma^2), are computed by
``peffnet.proxy_norm_moments`` with n Gauss-Hermite and n Gauss-Laguerre nodes over a grid that covers
the parameter box ``peffnet.proxy_norm_moments`` is specified for (gamma in [0.1, 5], beta in [-3, 3], gamma~
in [-0.5, 1], beta~ in [-1, 1] gives mu = gamma beta~ + beta in [-8, 8] and sigma = gamma (1 + gamma~) in
[0.05, 10]). The table gives the worst error divided by the tolerance max(1e-3, 1 % of the exact value), the
accuracy that function promises; below 1 keeps the promise.
Also shows plain Gauss-Hermite (one rule for every sigma) for comparison.

    python scripts/pn_quadrature.py                 # prints a markdown table (about 10 s)
    python scripts/pn_quadrature.py --split 1.0     # the same with another switch point
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import integrate, special

from peffnet import proxy_norm_moments
from peffnet.layers import proxy_moments
from peffnet.layers.proxy_moments import SIGMA_SPLIT

EXACT = {
    "swish": lambda u: u * special.expit(u),
    "gelu": lambda u: u * special.ndtr(u),
    "relu": lambda u: np.maximum(u, 0.0),
}


def exact_moments(act: str, mu: float, sigma: float) -> tuple[float, float]:
    """Mean and variance of act(mu + sigma Z) by adaptive quadrature, split at the bend u = 0."""
    f = EXACT[act]
    z0 = -mu / sigma
    points = [z0] if abs(z0) < 14 else None

    def integrate_(g):
        return integrate.quad(lambda z: g(mu + sigma * z) * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi), -14, 14,
                              points=points, limit=400, epsabs=1e-13, epsrel=1e-12)[0]

    mean = integrate_(f)
    return mean, integrate_(lambda u: (f(u) - mean) ** 2)


def plain_hermite(act: str, mu: np.ndarray, sigma: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite_e.hermegauss(n)
    f = EXACT[act](mu[:, None] + sigma[:, None] * x)
    mean = f @ (w / w.sum())
    return mean, ((f - mean[:, None]) ** 2) @ (w / w.sum())


def worst(mean, var, ref_mean, ref_var) -> float:
    def rel(a, b):
        return np.abs(a - b) / np.maximum(1e-3, 0.01 * np.abs(b))

    return float(max(rel(mean, ref_mean).max(), rel(var, ref_var).max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[8, 12, 16, 20, 24, 32])
    parser.add_argument("--split", type=float, default=SIGMA_SPLIT,
                        help=f"sigma where the rules switch (default: the library's {SIGMA_SPLIT})")
    args = parser.parse_args()
    proxy_moments.SIGMA_SPLIT = args.split
    mus = np.linspace(-8, 8, 33)
    # plus points around SIGMA_SPLIT, where the two rules hand over and each is at its worst
    sigmas = np.union1d(np.geomspace(0.05, 10, 24), args.split * np.array([0.9, 0.97, 1.0, 1.0001, 1.03, 1.1]))
    mu, sigma = (a.ravel() for a in np.meshgrid(mus, sigmas))
    print(f"grid: {mu.size} (mu, sigma) points, mu in [-8, 8], sigma in [0.05, 10]; rules switch at {args.split}; "
          "entries: worst |error| / max(1e-3, 1% of exact)\n")
    print("| activation | nodes | peffnet rule (float64) | peffnet rule (float32) | plain Gauss-Hermite |")
    print("|---|---|---|---|---|")
    for act in EXACT:
        ref = np.array([exact_moments(act, m, s) for m, s in zip(mu, sigma, strict=True)])
        for n in args.nodes:
            row = []
            for dtype in (torch.float64, torch.float32):
                # gamma = sigma, beta = mu, gamma~ = beta~ = 0 spans the same (mu, sigma) grid
                m, v = proxy_norm_moments(act, torch.tensor(sigma, dtype=dtype), torch.tensor(mu, dtype=dtype),
                                          torch.zeros(mu.size, dtype=dtype), torch.zeros(mu.size, dtype=dtype),
                                          nodes=(n, n))
                row.append(worst(m.double().numpy(), v.double().numpy(), ref[:, 0], ref[:, 1]))
            row.append(worst(*plain_hermite(act, mu, sigma, n), ref[:, 0], ref[:, 1]))
            print(f"| {act} | {n} | " + " | ".join(f"{e:.3g}" for e in row) + " |")


if __name__ == "__main__":
    main()
