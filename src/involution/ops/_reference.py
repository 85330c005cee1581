"""Backend ``reference``: the readable definition of involution, the spec every backend is
tested against, and its two gradients written with unfold/fold.

Any device, any floating dtype, and memory-hungry on purpose: ``unfold`` materialises KH*KW
shifted copies of the input, which is why it is never used outside tests, benchmarks and
``backend="reference"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NAME = "reference"
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def can_run(device: torch.device, dtype: torch.dtype, explicit: bool) -> str | None:
    """None for any device and floating dtype (unfold runs wherever torch does)."""
    return None if dtype in DTYPES else f"supports dtypes {DTYPES}, got {dtype}"


def grad_out_format(input: Tensor, kernel: Tensor, stride) -> torch.memory_format | None:
    """None: unfold/fold take any layout."""
    return None


def involution2d_reference(
    input: Tensor,
    kernel: Tensor,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> Tensor:
    """out[n,c,i,j] = sum_{u,v} kernel[n, c//(C/G), u, v, i, j] * input[n, c, i*s-p+u*d, j*s-p+v*d].

    input [N, C, H, W], kernel [N, G, K, K, Ho, Wo]; arguments are assumed already checked.
    """
    n, c, _, _ = input.shape
    _, g, kh, kw, ho, wo = kernel.shape
    cols = F.unfold(input, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(n, g, c // g, kh * kw, ho, wo)
    weights = kernel.reshape(n, g, 1, kh * kw, ho, wo)
    return (cols * weights).sum(dim=3).view(n, c, ho, wo)


def forward(input: Tensor, kernel: Tensor, stride, padding, dilation) -> Tensor:
    return involution2d_reference(
        input.contiguous(), kernel.contiguous(), stride, padding, dilation
    )


def grad_input(grad_out: Tensor, kernel: Tensor, input_size, stride, padding, dilation) -> Tensor:
    """fold of grad_out * kernel: every output pixel hands each tap's share back to the pixel it
    read."""
    n, c, ho, wo = grad_out.shape
    _, g, kh, kw, _, _ = kernel.shape
    cols = grad_out.reshape(n, g, c // g, 1, ho, wo) * kernel.reshape(n, g, 1, kh * kw, ho, wo)
    cols = cols.reshape(n, c * kh * kw, ho * wo)
    return F.fold(
        cols, tuple(input_size), (kh, kw), dilation=dilation, padding=padding, stride=stride
    )


def grad_kernel(
    grad_out: Tensor, input: Tensor, kernel_size, groups, stride, padding, dilation
) -> Tensor:
    """sum over the group's channels of unfold(input) * grad_out: a windowed dot product."""
    n, c, ho, wo = grad_out.shape
    kh, kw = kernel_size
    cols = F.unfold(input.contiguous(), (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(n, groups, c // groups, kh * kw, ho, wo)
    grad = (cols * grad_out.reshape(n, groups, c // groups, 1, ho, wo)).sum(dim=2)
    return grad.view(n, groups, kh, kw, ho, wo)
