"""Backend ``reference``: the unfold definition and its two gradients written with unfold/fold.

Readable, any device and floating dtype, and memory-hungry on purpose (``unfold`` materialises
KH*KW copies of the input): it is the spec the fast backends are tested against.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from involution.reference import involution2d_reference


def forward(input: Tensor, kernel: Tensor, stride, padding, dilation) -> Tensor:
    return involution2d_reference(
        input.contiguous(), kernel.contiguous(), stride, padding, dilation
    )


def grad_input(grad_out: Tensor, kernel: Tensor, input_size, stride, padding, dilation) -> Tensor:
    """fold of grad_out * kernel: every output pixel hands each tap's share back to the pixel it read."""
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
