"""The normalization that the norm-act layers (:mod:`peffnet.layers.norm_act`) and proxy norm
(:mod:`peffnet.layers.proxy_norm`) share: ``group_norm`` and the epsilon of every norm (paper Section 3.4)."""

import torch
import torch.nn.functional as F

NORM_EPS = 1e-3  # paper Section 3.4: epsilon of BN/GN/LN


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float) -> torch.Tensor:
    """``F.group_norm`` with its statistics in float32 and its output in ``x``'s dtype, the same on every device.

    Under mixed precision the two autocast policies differ: CUDA's runs ``group_norm`` in float32 and hands
    on float32, so the swish, proxy norm's affine (Eq. 4) and the activations kept for the backward pass would
    all run and be stored in float32; CPU's runs it on the bfloat16 input and hands on bfloat16. So the path
    tested on a CPU was not the one a GPU took. Here both normalize a float32 copy (neither policy casts a
    float32 input down) and pass on the half-precision activations the next convolution takes anyway.
    LayerNorm (one group) of a channels_last input on CUDA runs on its NHWC memory (:func:`layer_norm_nhwc`).
    """
    if groups == 1 and x.is_cuda and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return layer_norm_nhwc(x, weight, bias, eps)
    if x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        w = weight.float() if weight is not None else None
        b = bias.float() if bias is not None else None
        return F.group_norm(x.float(), groups, w, b, eps).to(x.dtype)
    return F.group_norm(x, groups, weight, bias, eps)


def layer_norm_nhwc(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                    eps: float) -> torch.Tensor:
    """LayerNorm over (C, H, W) of each image (GroupNorm with one group) computed on the channels_last memory as
    it lies: the NHWC view's last three dimensions, then the per-channel affine along its last one. On CUDA,
    ``F.group_norm`` copies a channels_last input to NCHW and back; ``group_norm`` takes this path there.
    Statistics in float32, the output in ``x``'s dtype and layout."""
    nhwc = x.permute(0, 2, 3, 1)
    y = F.layer_norm(nhwc.float(), nhwc.shape[1:], eps=eps)
    if weight is not None:
        y = y * weight.float() if bias is None else torch.addcmul(bias.float(), y, weight.float())
    return y.to(x.dtype).permute(0, 3, 1, 2)
