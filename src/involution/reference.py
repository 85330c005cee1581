"""The readable definition of involution: the spec every backend is tested against.

It materialises K*K shifted copies of the input with ``unfold``; that is exactly why it is slow and
memory-hungry, and why it is never used outside tests, benchmarks and ``backend="reference"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def output_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int) -> int:
    """Convolution output-size formula."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def involution2d_reference(
    input: torch.Tensor,
    kernel: torch.Tensor,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """out[n,c,i,j] = sum_{u,v} kernel[n, c//(C/G), u, v, i, j] * input[n, c, i*s-p+u*d, j*s-p+v*d].

    input [N, C, H, W], kernel [N, G, K, K, Ho, Wo]; arguments are assumed already checked.
    """
    n, c, _, _ = input.shape
    _, g, kh, kw, ho, wo = kernel.shape
    cols = F.unfold(input, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(n, g, c // g, kh * kw, ho, wo)
    weights = kernel.reshape(n, g, 1, kh * kw, ho, wo)
    return (cols * weights).sum(dim=3).view(n, c, ho, wo)
