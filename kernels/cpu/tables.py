"""Index tables shared by the CPU kernel families: which output columns a tap reads inside the
image, and which input (or, transposed, output) index each tap of each position touches.

They are computed once per call, outside the hot loops, because their integer divisions cost
more than a short row's multiply-adds.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# ``contract`` (fused multiply-add) and ``reassoc`` (vector partial sums in the channel dot
# products): neither changes how NaN and Inf propagate.
FASTMATH = {"contract", "reassoc"}


@njit(inline="always", cache=True)
def col_range(offset, stride, size_in, size_out):  # pragma: no cover - compiled
    """Output columns j in [lo, hi) with 0 <= j*stride + offset < size_in and 0 <= j < size_out."""
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    hi = (size_in - 1 - offset) // stride + 1  # floor division: a negative stays negative
    if hi > size_out:
        hi = size_out
    if hi < lo:
        hi = lo
    return lo, hi


@njit(cache=True)
def col_ranges(kw, pw, dw, sw, width, wo):  # pragma: no cover - compiled
    """table[v] = (lo, hi): the output columns whose tap v reads inside the image (``col_range``
    per tap, computed once per call: its integer divisions cost more than a short row's FMAs)."""
    table = np.empty((kw, 2), np.int64)
    for v in range(kw):
        lo, hi = col_range(v * dw - pw, sw, width, wo)
        table[v, 0] = lo
        table[v, 1] = hi
    return table


@njit(cache=True)
def tap_table(size_out, k, stride, pad, dil, size_in):  # pragma: no cover - compiled
    """table[i, u] = input index read by output index i through tap u, or -1 outside the image."""
    table = np.empty((size_out, k), np.int64)
    for i in range(size_out):
        for u in range(k):
            pos = i * stride - pad + u * dil
            table[i, u] = pos if (pos >= 0 and pos < size_in) else -1
    return table


@njit(cache=True)
def gather_table(size_in, k, stride, pad, dil, size_out):  # pragma: no cover - compiled
    """table[y, u] = output index i with i*stride - pad + u*dil = y, or -1 when there is none."""
    table = np.empty((size_in, k), np.int64)
    for y in range(size_in):
        for u in range(k):
            num = y + pad - u * dil
            i = num // stride
            table[y, u] = i if (num >= 0 and num % stride == 0 and i < size_out) else -1
    return table
