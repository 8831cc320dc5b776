"""Appendix C, measured: pre-activations stay normalized through depth with LN + PN, and drift without PN.

A deep random network of 1x1 convolutions (the fully-connected setting of the paper's Appendix C): each
layer is ``X = W Z`` with ``W ~ N(0, 1 / width)``, then

* ``lnpn``: LN over the channels of each sample, then the proxy-normalized swish (peffnet's
  ``ProxyNormAct2d``, gamma~ = beta~ = 0 as in the appendix);
* ``ln``: LN, then plain ``swish(gamma Y + beta)`` (peffnet's ``GroupNormAct`` with one group);
* ``none``: ``swish(gamma X + beta)``;

with ``gamma ~ U[0.5, 1.5]`` and ``beta ~ U[-0.5, 0.5]`` drawn per channel. For every layer we record the
per-channel mean and variance (over the samples) of the normalized pre-activations ``Y`` (``X`` for
``none``): BN would make them exactly 0 and 1, and Appendix C shows LN + PN keeps them close to that.

    python scripts/appendix_c.py                      # 50 layers, width 256: table + docs/img/appendix_c.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from peffnet.layers.norm_act import GroupNormAct
from peffnet.layers.proxy_norm import ProxyNormAct2d

MODES = ("lnpn", "ln", "none")


@torch.no_grad()
def simulate(mode: str, depth: int = 50, width: int = 256, samples: int = 4096, seed: int = 0,
             dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Push ``samples`` standard-normal inputs through ``depth`` random layers.

    Returns per-layer statistics of the pre-activations, each a tensor of length ``depth``:
    ``mean_rms`` (root mean square over channels of the channel means), ``var_median``, ``var_p10`` and
    ``var_p90`` (quantiles over channels of the channel variances).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, width, 1, 1, generator=gen, dtype=dtype)
    stats: dict[str, list[float]] = {"mean_rms": [], "var_median": [], "var_p10": [], "var_p90": []}
    for _ in range(depth):
        w = torch.randn(width, width, 1, 1, generator=gen, dtype=dtype) / width ** 0.5
        gamma = torch.rand(width, generator=gen, dtype=dtype) + 0.5
        beta = torch.rand(width, generator=gen, dtype=dtype) - 0.5
        x = F.conv2d(z, w)
        if mode == "none":
            y = x
            z = F.silu(x * gamma.view(-1, 1, 1) + beta.view(-1, 1, 1))
        else:
            layer = ProxyNormAct2d(width, groups=1) if mode == "lnpn" else GroupNormAct(width, groups=1)
            layer = layer.to(dtype).eval()
            layer.weight.copy_(gamma)
            layer.bias.copy_(beta)
            y = F.group_norm(x, 1, eps=layer.eps)  # the normalized pre-activations the activation sees
            z = layer(x)
        var, mean = torch.var_mean(y.flatten(1), dim=0)
        q = torch.quantile(var.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
        stats["mean_rms"].append(mean.pow(2).mean().sqrt().item())
        stats["var_p10"].append(q[0].item())
        stats["var_median"].append(q[1].item())
        stats["var_p90"].append(q[2].item())
    return {k: torch.tensor(v) for k, v in stats.items()}


def plot(results: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"lnpn": "LN + PN", "ln": "LN", "none": "no normalization"}
    fig, (ax_m, ax_v) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode, s in results.items():
        layers = torch.arange(1, len(s["mean_rms"]) + 1)
        (line,) = ax_m.plot(layers, s["mean_rms"], label=labels[mode])
        ax_v.plot(layers, s["var_median"], color=line.get_color(), label=labels[mode])
        ax_v.fill_between(layers, s["var_p10"], s["var_p90"], color=line.get_color(), alpha=0.2)
    ax_m.axhline(0, color="k", lw=0.5)
    ax_m.set(xlabel="layer", ylabel="RMS over channels of channel mean", title="per-channel mean of Y")
    ax_v.axhline(1, color="k", lw=0.5)
    ax_v.set(xlabel="layer", ylabel="channel variance (median, 10-90 %)", title="per-channel variance of Y",
             yscale="log")
    ax_m.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/img/appendix_c.png"))
    args = parser.parse_args()
    results = {m: simulate(m, args.depth, args.width, args.samples, args.seed) for m in MODES}
    print(f"depth {args.depth}, width {args.width}, {args.samples} samples, seed {args.seed}: "
          "RMS of channel means / median channel variance [10-90 %] of the pre-activations\n")
    print("| layer | " + " | ".join(MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for i in sorted({0, *range(9, args.depth, 10), args.depth - 1}):
        cells = [f"{s['mean_rms'][i]:.3f} / {s['var_median'][i]:.3g} [{s['var_p10'][i]:.3g}-{s['var_p90'][i]:.3g}]"
                 for s in results.values()]
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
    plot(results, args.out)
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()
