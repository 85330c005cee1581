"""Involution on the CPU: forward, grad_input and grad_kernel as parallel Numba kernels.

Torch-free: NumPy arrays in, arrays out. Every kernel overwrites a preallocated output, so the
caller decides where memory comes from (``involution.ops`` hands in torch-owned buffers), and no
kernel allocates anything of the size of its operands.

The op, with g = c // (C/G) and zero outside the image::

    out[n,c,i,j] = sum_{u,v} kernel[n,g,u,v,i,j] * x[n,c, i*sh-ph+u*dh, j*sw-pw+v*dw]

``kernel`` is always [N, G, KH, KW, Ho, Wo] (C-contiguous). The feature maps (x, out and their
gradients) come in one of two layouts, chosen per call by the caller (see ``nhwc_is_faster``):

``"nchw"`` -- x [N, C, H, W]: for small kernels (3x3) and groups of fewer than 8 channels.
    One parallel task per (n, g, output row). The innermost loop walks one row of the output, of the
    kernel and of the input at once (contiguous for stride 1, so LLVM vectorises it); the tap's
    valid column range is clipped once outside that loop (``_col_range``), out-of-image rows are
    skipped. The rows a task touches stay in cache while the group's C/G channels reuse them.

``"nhwc"`` -- x [N, H, W, C]: for >= 8 channels per group (RedNet has 16) and kernels of 5x5 and up.
    The vector dimension is the group's channels, so the speed does not depend on the image width:
    each output pixel accumulates its taps in registers, 8 channels at a time (``_fma8``), with the
    valid taps looked up in small per-axis tables (``_taps``), so the innermost work has no bounds
    test and no dependence on the image width.

In both layouts no two tasks write the same element: no atomics, no cross-thread reductions.
grad_input, the transpose of the forward (output pixels scatter into the input pixels they read),
is written as a gather: for input row y and tap u the only output row that read y through u is
i = (y + ph - u*dh) / sh, when that is a whole number in range.

``fastmath`` is limited to ``contract`` (fused multiply-add) and ``reassoc`` (lets the channel dot
products of grad_kernel use vector partial sums): neither changes how NaN and Inf propagate.
Accumulation is in the arrays' dtype (float32 or float64). Call the kernels through ``forward``,
``grad_input`` and ``grad_kernel``: they compile each signature with LLVM's SLP vectoriser on
(``_slp_vectorize``), which the register-blocked NHWC loops need.
"""

from __future__ import annotations

import contextlib

import numpy as np
from numba import njit, prange
from numba.core import config as numba_config

__all__ = [
    "FASTMATH",
    "LAYOUTS",
    "forward",
    "grad_input",
    "grad_kernel",
    "nhwc_is_faster",
    "forward_nchw",
    "grad_input_nchw",
    "grad_kernel_nchw",
    "forward_nhwc",
    "grad_input_nhwc",
    "grad_kernel_nhwc",
]

FASTMATH = {"contract", "reassoc"}
LAYOUTS = ("nchw", "nhwc")
_VEC = 8  # channels per register block in the NHWC kernels (one AVX2 register of float32)


def nhwc_is_faster(channels_per_group: int, taps: int) -> bool:
    """Layout policy of ``involution2d``: NHWC when a group has at least a vector (8) of channels
    and the kernel has at least 25 taps (5x5). Measured at the RedNet-50 shapes on a 2-core AMD
    EPYC: for 7x7 kernels NHWC is ~1.5x faster than NCHW including the transposes; for the 3x3
    stem the transposes cost more than the NHWC loops save, and with groups narrower than a vector
    (e.g. G = C) there is nothing to vectorise across channels."""
    return channels_per_group >= _VEC and taps >= 25


# ------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------


@njit(inline="always", cache=True)
def _col_range(offset, stride, size_in, size_out):  # pragma: no cover - compiled
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
def _taps(size_out, k, stride, pad, dil, size_in):  # pragma: no cover - compiled
    """table[i, u] = input index read by output index i through tap u, or -1 outside the image."""
    table = np.empty((size_out, k), np.int64)
    for i in range(size_out):
        for u in range(k):
            pos = i * stride - pad + u * dil
            table[i, u] = pos if (pos >= 0 and pos < size_in) else -1
    return table


@njit(cache=True)
def _taps_transposed(size_in, k, stride, pad, dil, size_out):  # pragma: no cover - compiled
    """table[y, u] = output index i with i*stride - pad + u*dil = y, or -1 when there is none."""
    table = np.empty((size_in, k), np.int64)
    for y in range(size_in):
        for u in range(k):
            num = y + pad - u * dil
            i = num // stride
            table[y, u] = i if (num >= 0 and num % stride == 0 and i < size_out) else -1
    return table


@njit(inline="always", cache=True)
def _fma8(acc, k, xs):  # pragma: no cover - compiled
    """acc + k * xs[0:8] on a tuple of 8 scalars (kept in registers). ``xs`` is a view that starts
    at the block: constant indices need no negative-index fix-up, so the 8 loads are consecutive
    and LLVM turns them into one vector load + FMA."""
    return (
        acc[0] + k * xs[0],
        acc[1] + k * xs[1],
        acc[2] + k * xs[2],
        acc[3] + k * xs[3],
        acc[4] + k * xs[4],
        acc[5] + k * xs[5],
        acc[6] + k * xs[6],
        acc[7] + k * xs[7],
    )


@njit(inline="always", cache=True)
def _store8(acc, out):  # pragma: no cover - compiled
    out[0] = acc[0]
    out[1] = acc[1]
    out[2] = acc[2]
    out[3] = acc[3]
    out[4] = acc[4]
    out[5] = acc[5]
    out[6] = acc[6]
    out[7] = acc[7]


# ------------------------------------------------------------------------------------------------
# NCHW kernels
# ------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def forward_nchw(x, kernel, out, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    """out [N,C,Ho,Wo] = involution of x [N,C,H,W] with kernel [N,G,KH,KW,Ho,Wo]."""
    n_batch, channels, height, width = x.shape
    groups, kh, kw, ho, wo = kernel.shape[1:]
    cpg = channels // groups
    for task in prange(n_batch * groups * ho):
        n = task // (groups * ho)
        g = (task // ho) % groups
        i = task % ho
        for cc in range(cpg):
            c = g * cpg + cc
            orow = out[n, c, i]
            for j in range(wo):
                orow[j] = 0
            for u in range(kh):
                ih = i * sh - ph + u * dh
                if ih < 0 or ih >= height:
                    continue
                xrow = x[n, c, ih]
                for v in range(kw):
                    off = v * dw - pw
                    lo, hi = _col_range(off, sw, width, wo)
                    if hi <= lo:
                        continue
                    # Views starting at 0 let LLVM prove the indices non-negative (no wraparound
                    # selects), which is what makes these loops vectorise.
                    o = orow[lo:hi]
                    k = kernel[n, g, u, v, i, lo:hi]
                    if sw == 1:
                        xs = xrow[lo + off : hi + off]
                        for j in range(hi - lo):
                            o[j] += k[j] * xs[j]
                    else:
                        xs = xrow[lo * sw + off :]
                        for j in range(hi - lo):
                            o[j] += k[j] * xs[j * sw]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def grad_kernel_nchw(grad_out, x, grad_k, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    """grad_k[n,g,u,v,i,j] = sum_{c in g} grad_out[n,c,i,j] * x[n,c,i*sh-ph+u*dh, j*sw-pw+v*dw]."""
    n_batch, channels, height, width = x.shape
    groups, kh, kw, ho, wo = grad_k.shape[1:]
    cpg = channels // groups
    for task in prange(n_batch * groups * ho):
        n = task // (groups * ho)
        g = (task // ho) % groups
        i = task % ho
        for u in range(kh):
            ih = i * sh - ph + u * dh
            inside = ih >= 0 and ih < height
            for v in range(kw):
                grow = grad_k[n, g, u, v, i]
                for j in range(wo):
                    grow[j] = 0
                if not inside:
                    continue
                off = v * dw - pw
                lo, hi = _col_range(off, sw, width, wo)
                if hi <= lo:
                    continue
                acc = grow[lo:hi]
                for cc in range(cpg):
                    c = g * cpg + cc
                    gos = grad_out[n, c, i, lo:hi]
                    if sw == 1:
                        xs = x[n, c, ih, lo + off : hi + off]
                        for j in range(hi - lo):
                            acc[j] += gos[j] * xs[j]
                    else:
                        xs = x[n, c, ih, lo * sw + off :]
                        for j in range(hi - lo):
                            acc[j] += gos[j] * xs[j * sw]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def grad_input_nchw(
    grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw
):  # pragma: no cover - compiled
    """grad_x[n,c,y,x] = sum of kernel[n,g,u,v,i,j] * grad_out[n,c,i,j] over the (u,v,i,j) that
    read (y, x) -- gathered per input row, so each task owns what it writes."""
    n_batch, channels, height, width = grad_x.shape
    groups, kh, kw, ho, wo = kernel.shape[1:]
    cpg = channels // groups
    for task in prange(n_batch * groups * height):
        n = task // (groups * height)
        g = (task // height) % groups
        y = task % height
        for cc in range(cpg):
            c = g * cpg + cc
            xrow = grad_x[n, c, y]
            for col in range(width):
                xrow[col] = 0
            for u in range(kh):
                num = y + ph - u * dh
                if num < 0 or num % sh != 0:
                    continue
                i = num // sh
                if i >= ho:
                    continue
                gorow = grad_out[n, c, i]
                for v in range(kw):
                    off = v * dw - pw
                    lo, hi = _col_range(off, sw, width, wo)
                    if hi <= lo:
                        continue
                    k = kernel[n, g, u, v, i, lo:hi]
                    gos = gorow[lo:hi]
                    if sw == 1:
                        xs = xrow[lo + off : hi + off]
                        for j in range(hi - lo):
                            xs[j] += k[j] * gos[j]
                    else:
                        xs = xrow[lo * sw + off :]
                        for j in range(hi - lo):
                            xs[j * sw] += k[j] * gos[j]


# ------------------------------------------------------------------------------------------------
# NHWC kernels
# ------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def forward_nhwc(x, kernel, out, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    """out [N,Ho,Wo,C] = involution of x [N,H,W,C] with kernel [N,G,KH,KW,Ho,Wo]."""
    n_batch, height, width, channels = x.shape
    groups, kh, kw, ho, wo = kernel.shape[1:]
    cpg = channels // groups
    nblocks = cpg // _VEC
    rows = _taps(ho, kh, sh, ph, dh, height)
    cols = _taps(wo, kw, sw, pw, dw, width)
    zero = np.zeros(1, out.dtype)[0]
    for task in prange(n_batch * ho):
        n = task // ho
        i = task % ho
        xn = x[n]
        for g in range(groups):  # group outer: its KH*KW kernel rows stay in L1 across the row
            kk = kernel[n, g]
            for j in range(wo):
                opix = out[n, i, j]
                for b in range(nblocks):
                    c0 = g * cpg + b * _VEC
                    acc = (zero, zero, zero, zero, zero, zero, zero, zero)
                    for u in range(kh):
                        ih = rows[i, u]
                        if ih < 0:
                            continue
                        for v in range(kw):
                            jw = cols[j, v]
                            if jw < 0:
                                continue
                            acc = _fma8(acc, kk[u, v, i, j], xn[ih, jw, c0 : c0 + _VEC])
                    _store8(acc, opix[c0 : c0 + _VEC])
                for c in range(g * cpg + nblocks * _VEC, (g + 1) * cpg):
                    s = zero
                    for u in range(kh):
                        ih = rows[i, u]
                        if ih < 0:
                            continue
                        for v in range(kw):
                            jw = cols[j, v]
                            if jw < 0:
                                continue
                            s += kk[u, v, i, j] * xn[ih, jw, c]
                    opix[c] = s


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def grad_input_nhwc(
    grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw
):  # pragma: no cover - compiled
    """grad_x [N,H,W,C] from grad_out [N,Ho,Wo,C]: a gather per input pixel, taps from tables."""
    n_batch, height, width, channels = grad_x.shape
    groups, kh, kw, ho, wo = kernel.shape[1:]
    cpg = channels // groups
    nblocks = cpg // _VEC
    rows = _taps_transposed(height, kh, sh, ph, dh, ho)
    cols = _taps_transposed(width, kw, sw, pw, dw, wo)
    zero = np.zeros(1, grad_x.dtype)[0]
    for task in prange(n_batch * height):
        n = task // height
        y = task % height
        gon = grad_out[n]
        for g in range(groups):  # group outer: its kernel rows stay in L1 across the row
            kk = kernel[n, g]
            for xc in range(width):
                gpix = grad_x[n, y, xc]
                for b in range(nblocks):
                    c0 = g * cpg + b * _VEC
                    acc = (zero, zero, zero, zero, zero, zero, zero, zero)
                    for u in range(kh):
                        i = rows[y, u]
                        if i < 0:
                            continue
                        for v in range(kw):
                            j = cols[xc, v]
                            if j < 0:
                                continue
                            acc = _fma8(acc, kk[u, v, i, j], gon[i, j, c0 : c0 + _VEC])
                    _store8(acc, gpix[c0 : c0 + _VEC])
                for c in range(g * cpg + nblocks * _VEC, (g + 1) * cpg):
                    s = zero
                    for u in range(kh):
                        i = rows[y, u]
                        if i < 0:
                            continue
                        for v in range(kw):
                            j = cols[xc, v]
                            if j < 0:
                                continue
                            s += kk[u, v, i, j] * gon[i, j, c]
                    gpix[c] = s


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def grad_kernel_nhwc(grad_out, x, grad_k, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    """grad_k[n,g,u,v,i,j] = dot(grad_out[n,i,j,group g], x[n,ih,jw,group g]) (NHWC operands)."""
    n_batch, height, width, channels = x.shape
    groups, kh, kw, ho, wo = grad_k.shape[1:]
    cpg = channels // groups
    zero = np.zeros(1, grad_k.dtype)[0]
    for task in prange(n_batch * groups * ho):
        n = task // (groups * ho)
        g = (task // ho) % groups
        i = task % ho
        c0 = g * cpg
        for u in range(kh):
            ih = i * sh - ph + u * dh
            inside = ih >= 0 and ih < height
            for v in range(kw):
                off = v * dw - pw
                lo, hi = _col_range(off, sw, width, wo)
                if not inside:
                    lo = 0
                    hi = 0
                grow = grad_k[n, g, u, v, i]
                for j in range(lo):
                    grow[j] = 0
                for j in range(hi, wo):
                    grow[j] = 0
                if hi <= lo:
                    continue
                xrow = x[n, ih]
                gorow = grad_out[n, i]
                for j in range(lo, hi):
                    a = gorow[j, c0 : c0 + cpg]
                    b = xrow[j * sw + off, c0 : c0 + cpg]
                    s = zero
                    for t in range(cpg):
                        s += a[t] * b[t]
                    grow[j] = s


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------

_KERNELS = {
    "nchw": (forward_nchw, grad_input_nchw, grad_kernel_nchw),
    "nhwc": (forward_nhwc, grad_input_nhwc, grad_kernel_nhwc),
}


def _args(stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    return int(sh), int(sw), int(ph), int(pw), int(dh), int(dw)


@contextlib.contextmanager
def _slp_vectorize():
    """Numba leaves LLVM's SLP vectoriser off by default; the NHWC kernels need it to turn the
    8-scalar accumulator tuples of ``_fma8`` into vector FMAs (about 2x faster), so the kernels
    are compiled (or loaded from the cache) with it switched on, for this compilation only."""
    old = numba_config.SLP_VECTORIZE
    numba_config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        numba_config.SLP_VECTORIZE = old


_COMPILED: set = set()


def _run(kernel, *args) -> None:
    key = (kernel, tuple((a.dtype, a.ndim, a.flags.c_contiguous) for a in args[:3]))
    if key in _COMPILED:
        kernel(*args)
        return
    with _slp_vectorize():  # the first call of a signature compiles it
        kernel(*args)
    _COMPILED.add(key)


def forward(x, kernel, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), layout="nchw"):
    """Write the involution of ``x`` with ``kernel`` into ``out`` (layout "nchw" or "nhwc")."""
    _run(_KERNELS[layout][0], x, kernel, out, *_args(stride, padding, dilation))
    return out


def grad_input(
    grad_out, kernel, grad_x, stride=(1, 1), padding=(0, 0), dilation=(1, 1), layout="nchw"
):
    """Write d(loss)/d(x) into ``grad_x`` (the shape of x, in ``layout``)."""
    _run(_KERNELS[layout][1], grad_out, kernel, grad_x, *_args(stride, padding, dilation))
    return grad_x


def grad_kernel(grad_out, x, grad_k, stride=(1, 1), padding=(0, 0), dilation=(1, 1), layout="nchw"):
    """Write d(loss)/d(kernel) into ``grad_k`` [N,G,KH,KW,Ho,Wo]; also the windowed dot product
    sum_{c in g} grad_out[c, i, j] * x[c, i*sh-ph+u*dh, j*sw-pw+v*dw] (local attention logits)."""
    _run(_KERNELS[layout][2], grad_out, x, grad_k, *_args(stride, padding, dilation))
    return grad_k
