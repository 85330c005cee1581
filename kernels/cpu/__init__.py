"""Involution on the CPU: forward, grad_input and grad_kernel as parallel Numba kernels.

Torch-free: NumPy arrays in, arrays out. Every kernel overwrites a preallocated output, so the
caller decides where memory comes from (``involution.ops`` hands in torch-owned buffers), and no
kernel allocates anything of the size of its operands.

The op, with g = c // (C/G) and zero outside the image::

    out[n,c,i,j] = sum_{u,v} kernel[n,g,u,v,i,j] * x[n,c, i*sh-ph+u*dh, j*sw-pw+v*dw]

``kernel`` is always [N, G, KH, KW, Ho, Wo] (C-contiguous). The feature maps (x, out and their
gradients) come in one of two layouts, chosen per call by the caller with ``policy``. The package
holds one module per kernel family:

- ``nchw``: x [N, C, H, W], one task per output row (small kernels, narrow groups);
- ``flat``: NCHW over flattened planes, for stride 1 and an output as wide as the input;
- ``nhwc``: x [N, H, W, C], the group's channels as the vector dimension (5x5 and up);
- ``blocked``: for groups of a multiple of 16 channels (RedNet's), register tiles over rows held
  in a ring of padded scratch rows, operands in any layout (``simd``: the tiles' building blocks,
  ``rows``: the row layouts, ``tiles``: the row products, ``generic``: the same sums as plain
  loops, for the tests);
- ``fused``: the kernel generation's last 1x1 conv fused with the aggregation (same groups);
- ``tables``: the index tables they share; ``policy``: which family runs a call;
- ``dispatch``: the entry points and the compile cache. Call the kernels through these.

In every family no two tasks write the same element: no atomics, no cross-thread reductions.
Accumulation is in the arrays' dtype (float32 or float64).
"""

from __future__ import annotations

from involution.kernels.cpu.blocked import blocked_applies
from involution.kernels.cpu.dispatch import (
    LAYOUTS,
    blocked_forward,
    blocked_grad_input,
    blocked_grad_kernel,
    forward,
    fused_backward,
    fused_forward,
    grad_input,
    grad_kernel,
)
from involution.kernels.cpu.flat import flat_applies, grad_kernel_nchw_flat, taps_nchw_flat
from involution.kernels.cpu.nchw import forward_nchw, grad_input_nchw, grad_kernel_nchw
from involution.kernels.cpu.nhwc import forward_nhwc, grad_input_nhwc, grad_kernel_nhwc, taps_nhwc
from involution.kernels.cpu.policy import grad_kernel_nhwc_is_faster, nhwc_is_faster
from involution.kernels.cpu.simd import LANES
from involution.kernels.cpu.tables import FASTMATH

__all__ = [
    "FASTMATH",
    "LANES",
    "LAYOUTS",
    "blocked_applies",
    "blocked_forward",
    "blocked_grad_input",
    "blocked_grad_kernel",
    "forward",
    "fused_backward",
    "fused_forward",
    "grad_input",
    "grad_kernel",
    "nhwc_is_faster",
    "flat_applies",
    "grad_kernel_nhwc_is_faster",
    "forward_nchw",
    "grad_input_nchw",
    "grad_kernel_nchw",
    "taps_nchw_flat",
    "grad_kernel_nchw_flat",
    "taps_nhwc",
    "forward_nhwc",
    "grad_input_nhwc",
    "grad_kernel_nhwc",
]
