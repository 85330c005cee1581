"""Compile the CPU kernels into Numba's disk cache before the test workers start.

    python tests/warm_kernels.py float32|float64

Every kernel signature costs seconds to tens of seconds of LLVM on its first call (over a minute
for the five blocked and fused kernels of one dtype and layout). Under pytest-xdist each worker
paid that for whatever its tests called first, and two workers often compiled the same
signature at once. ``conftest.pytest_sessionstart`` runs this once per dtype, the dtypes in
parallel, so that the workers load the kernels from the cache. It calls the ops the way the
tests do (public functions, tiny tensors, NCHW and channels_last operands, with and without the
fused op's bias) so that it compiles the signatures they use; one it misses is compiled by the
first test that needs it, as before.
"""

from __future__ import annotations

import sys

import torch


def warm(dtype: torch.dtype) -> None:
    import numpy as np

    from involution.kernels.cpu.generic import GENERIC
    from involution.ops import fused_involution2d, involution2d

    gen = torch.Generator().manual_seed(0)

    def rand(*shape, fmt=torch.contiguous_format):
        return torch.randn(*shape, dtype=dtype, generator=gen).contiguous(memory_format=fmt)

    def strided(*shape):  # neither NCHW- nor NHWC-contiguous: a view of a wider map
        return torch.randn(*shape[:-1], shape[-1] + 1, dtype=dtype, generator=gen)[..., :-1]

    def step(out, grad=None):
        out.backward(torch.ones_like(out) if grad is None else grad)

    last = torch.channels_last
    for fmt in (torch.contiguous_format, last):
        # groups of 16 (the blocked kernels), of 4 and 1 (NCHW, flat) and of 12 (NHWC)
        for c, g, h, w, k, stride in (
            (32, 2, 9, 11, 3, 1),
            (32, 2, 9, 11, 5, 2),
            (8, 2, 7, 6, 3, 1),
            (4, 4, 8, 9, 5, 2),
            (24, 2, 11, 12, 7, 1),
        ):
            ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
            x = rand(2, c, h, w, fmt=fmt).requires_grad_()
            kernel = rand(2, g, k, k, ho, wo).requires_grad_()
            step(involution2d(x, kernel, stride=stride, backend="numba_cpu"))
        for bias in (True, False):
            x = rand(2, 32, 9, 11, fmt=fmt).requires_grad_()
            hidden = rand(2, 8, 9, 11, fmt=fmt).requires_grad_()
            weight = rand(2 * 49, 8).requires_grad_()
            b = rand(2 * 49).requires_grad_() if bias else None
            step(fused_involution2d(x, hidden, weight, b, 7, backend="numba_cpu"))
    # operands in mixed layouts, as the tests give them (a view, another layout's gradient), in
    # the dtypes they give them in: each signature costs 10-30 s
    single = dtype == torch.float32
    kernel = rand(2, 2, 3, 3, 9, 11).requires_grad_()
    if single:
        x = strided(2, 32, 9, 11).requires_grad_()
        step(involution2d(x, kernel, backend="numba_cpu"))
    else:
        out = involution2d(rand(2, 32, 9, 11, fmt=last).requires_grad_(), kernel)
        step(out, rand(*out.shape))
    out = involution2d(rand(2, 32, 9, 11).requires_grad_(), kernel, backend="numba_cpu")
    step(out, strided(*out.shape))

    def fused(x, hidden):
        weight, b = rand(2 * 49, 8).requires_grad_(), rand(2 * 49).requires_grad_()
        return fused_involution2d(x.requires_grad_(), hidden.requires_grad_(), weight, b, 7)

    if single:
        with torch.no_grad():
            fused(strided(2, 32, 9, 11), rand(2, 8, 9, 11))
    else:
        step(fused(rand(2, 32, 9, 11, fmt=last), rand(2, 8, 9, 11)))
    out = fused(rand(2, 32, 9, 11), rand(2, 8, 9, 11))
    step(out, strided(*out.shape))
    step(fused(rand(2, 32, 9, 11, fmt=last), rand(2, 8, 9, 11, fmt=last)), rand(2, 32, 9, 11))
    # the generic loops the kernel tests check the blocked kernels against
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    for nhwc in (False, True):
        x = rand(1, 16, 5, 6, fmt=last if nhwc else torch.contiguous_format).numpy()
        kern = rand(1, 1, 3, 3, 5, 6).numpy()
        args = (1, 1, 1, 1, 1, 1)
        GENERIC["forward"](x, kern, np.empty(x.shape, np_dtype), *args)
        GENERIC["grad_input"](x, kern, np.empty(x.shape, np_dtype), *args)
        GENERIC["grad_kernel"](x, x, np.empty(kern.shape, np_dtype), *args)


if __name__ == "__main__":
    warm(getattr(torch, sys.argv[1]))
