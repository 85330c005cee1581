"""The blocked kernels' sums written as plain loops, in the same order, one term at a time.

The readable statement of what ``blocked`` computes and of the order it adds in: per result,
the taps in (u, v) order (the forward and grad_input; grad_input only over the taps whose output
pixel exists), the group's channels in order (grad_kernel), one fused multiply-add per term,
starting from zero. Columns outside the image weigh a zero (the blocked rows are zero-padded),
rows outside it are skipped. ``tests/test_kernels.py`` holds the blocked kernels to these loops bit
for bit; they are far too slow for anything else.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from involution.kernels.cpu.simd import FASTMATH


@njit(cache=True, fastmath=FASTMATH)
def forward_generic(x, kernel, out, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    n_batch, channels, height, width = x.shape
    groups, kh, kw, ho, wo = kernel.shape[1:]
    cpg = channels // groups
    for n in range(n_batch):
        for c in range(channels):
            g = c // cpg
            for i in range(ho):
                for j in range(wo):
                    acc = out.dtype.type(0)
                    for u in range(kh):
                        y = i * sh - ph + u * dh
                        if y < 0 or y >= height:
                            continue
                        for v in range(kw):
                            col = j * sw - pw + v * dw
                            value = x[n, c, y, col] if 0 <= col < width else x.dtype.type(0)
                            acc += kernel[n, g, u, v, i, j] * value
                    out[n, c, i, j] = acc


@njit(cache=True, fastmath=FASTMATH)
def grad_input_generic(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw):  # pragma: no cover
    n_batch, channels, height, width = grad_x.shape
    groups, kh, kw, ho, wo = kernel.shape[1:]
    cpg = channels // groups
    for n in range(n_batch):
        for c in range(channels):
            g = c // cpg
            for y in range(height):
                for col in range(width):
                    acc = grad_x.dtype.type(0)
                    for u in range(kh):
                        num = y + ph - u * dh
                        if num < 0 or num % sh != 0 or num // sh >= ho:
                            continue
                        i = num // sh
                        for v in range(kw):
                            num_j = col + pw - v * dw
                            if num_j % sw != 0:
                                continue
                            j = num_j // sw
                            if 0 <= j < wo:
                                acc += kernel[n, g, u, v, i, j] * grad_out[n, c, i, j]
                    grad_x[n, c, y, col] = acc


@njit(cache=True, fastmath=FASTMATH)
def grad_kernel_generic(grad_out, x, grad_k, sh, sw, ph, pw, dh, dw):  # pragma: no cover
    n_batch, channels, height, width = x.shape
    groups, kh, kw, ho, wo = grad_k.shape[1:]
    cpg = channels // groups
    for n in range(n_batch):
        for g in range(groups):
            for u in range(kh):
                for v in range(kw):
                    for i in range(ho):
                        y = i * sh - ph + u * dh
                        for j in range(wo):
                            acc = grad_k.dtype.type(0)
                            col = j * sw - pw + v * dw
                            if 0 <= y < height:
                                for cc in range(cpg):
                                    c = g * cpg + cc
                                    value = x[n, c, y, col] if 0 <= col < width else x.dtype.type(0)
                                    acc += grad_out[n, c, i, j] * value
                            grad_k[n, g, u, v, i, j] = acc


GENERIC = {
    "forward": forward_generic,
    "grad_input": grad_input_generic,
    "grad_kernel": grad_kernel_generic,
}
_ = np  # numpy is the arrays' home; the loops index them directly
