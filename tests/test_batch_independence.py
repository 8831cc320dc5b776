"""Micro-batching with gradient accumulation equals full-batch training with GN, LN, LN+PN (plain and fused)
and GN+PN, and does not with BN (paper Section 3.2; docs/reference.md, "Training recipe")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import randomize
from peffnet import create_model, fuse_proxy_norm

BATCH, MICRO = 8, 2  # four micro-batches of two images


def full_and_accumulated_grads(norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("g16_efficientnet_b0", norm=norm.split()[0], num_classes=10, drop_rate=0, drop_path_rate=0)
    randomize(model.double(), scale=0.2)  # norm/PN parameters off their initial values: PN's moments matter
    if norm.endswith("fused"):
        fuse_proxy_norm(model)
    x = torch.randn(BATCH, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (BATCH,))
    F.cross_entropy(model(x), y).backward()
    full = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    for xs, ys in zip(x.split(MICRO), y.split(MICRO), strict=True):
        (F.cross_entropy(model(xs), ys) * (len(ys) / BATCH)).backward()  # accumulate the mean over the batch
    return full, torch.cat([p.grad.flatten() for p in model.parameters()])


def test_accumulated_micro_batches_equal_the_full_batch_except_with_bn() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rel = {}
        for norm in ("gn", "ln", "lnpn", "gnpn", "lnpn fused", "bn"):
            full, accumulated = full_and_accumulated_grads(norm)
            rel[norm] = ((accumulated - full).norm() / full.norm()).item()
    finally:
        torch.set_num_threads(threads)
    for norm in ("gn", "ln", "lnpn", "gnpn", "lnpn fused"):
        assert rel[norm] < 1e-12, rel  # identical up to float64 summation order
    assert rel["bn"] > 1e-2, rel  # BN statistics over 2 images are not those over 8
