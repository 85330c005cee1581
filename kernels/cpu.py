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
    valid column range comes from a per-call table (``_col_ranges``), out-of-image rows are
    skipped. The rows a task touches stay in cache while the group's C/G channels reuse them.
    With stride 1 and an output as wide as the input (the default padding) the ``*_nchw_flat``
    kernels run instead: one loop per tap over a chunk of flattened rows, exact at the image
    edges (see their section); ``forward``/``grad_input``/``grad_kernel`` pick them by themselves.

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
from numba import get_num_threads, njit, prange
from numba.core import config as numba_config

__all__ = [
    "FASTMATH",
    "LAYOUTS",
    "forward",
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

FASTMATH = {"contract", "reassoc"}
LAYOUTS = ("nchw", "nhwc")
_VEC = 8  # channels per register block in the NHWC kernels (one AVX2 register of float32)


def nhwc_is_faster(channels_per_group: int, taps: int, operands_nhwc: bool = False) -> bool:
    """Layout policy of ``involution2d``: NHWC when a group has at least a vector (8) of channels
    and either the kernel has at least 25 taps (5x5) or the operands are NHWC already. Measured at
    the RedNet-50 shapes on a 2-core AMD EPYC: for 7x7 kernels NHWC is ~1.5x faster than NCHW
    including the transposes; for the 3x3 stem the transposes cost more than the NHWC loops save,
    so NCHW operands stay NCHW there; with groups narrower than a vector (e.g. G = C) there is
    nothing to vectorise across channels."""
    return channels_per_group >= _VEC and (taps >= 25 or operands_nhwc)


def grad_kernel_nhwc_is_faster(
    channels_per_group: int, taps: int, stride, width: int, out_width: int
) -> bool:
    """Layout policy of the kernel gradient: like ``nhwc_is_faster``, except that the flat-plane
    NCHW kernel wins wherever it applies on maps at least 16 wide (measured on the 2-core EPYC at
    RedNet-50's 7x7 shapes: 1.6x faster at 56x56 and 28x28, and it needs no transposed copies of
    grad_out and x); on 14x14 and 7x7 maps the NHWC kernel stays faster."""
    if not nhwc_is_faster(channels_per_group, taps):
        return False
    return not (flat_applies(stride, width, out_width) and width >= 16)


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
def _col_ranges(kw, pw, dw, sw, width, wo):  # pragma: no cover - compiled
    """table[v] = (lo, hi): the output columns whose tap v reads inside the image (``_col_range``
    per tap, computed once per call: its integer divisions cost more than a short row's FMAs)."""
    table = np.empty((kw, 2), np.int64)
    for v in range(kw):
        lo, hi = _col_range(v * dw - pw, sw, width, wo)
        table[v, 0] = lo
        table[v, 1] = hi
    return table


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
    cols = _col_ranges(kw, pw, dw, sw, width, wo)
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
                    lo, hi = cols[v, 0], cols[v, 1]
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
    cols = _col_ranges(kw, pw, dw, sw, width, wo)
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
                lo, hi = cols[v, 0], cols[v, 1]
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
    cols = _col_ranges(kw, pw, dw, sw, width, wo)
    rows = _taps_transposed(height, kh, sh, ph, dh, ho)
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
                i = rows[y, u]
                if i < 0:
                    continue
                gorow = grad_out[n, c, i]
                for v in range(kw):
                    off = v * dw - pw
                    lo, hi = cols[v, 0], cols[v, 1]
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
# NCHW kernels over flattened planes (stride 1, output as wide as the input)
#
# With stride 1 and Wo == W the output and input planes share their row pitch, so tap (u, v) is one
# constant shift of the flattened plane: out[p] += k[u,v][p] * x[p + delta], delta =
# (u*dh - ph)*W + v*dw - pw. One loop then covers a whole chunk of rows (long, vectorised, no
# per-row loop overhead or scalar tail; about 2x faster than the row kernels at 3x3). The price is
# the columns where a tap falls off the left or right edge of the image: there the flat shift reads
# the neighbouring row. Those few positions are saved before the tap's loop and restored after it
# (forward, grad_input) or zeroed (grad_kernel), so every result is exact -- the same sums, in the
# same order, as the row kernels; no subtraction, so a NaN or Inf in the neighbouring row never
# leaks in.
# ------------------------------------------------------------------------------------------------


@njit(inline="always", cache=True)
def _edge_columns(off, width):  # pragma: no cover - compiled
    """[lo, hi) of the columns j whose tap, shifted by ``off``, falls outside [0, width)."""
    if off < 0:
        return 0, min(-off, width)
    if off > 0:
        return max(width - off, 0), width
    return 0, 0


@njit(inline="always", cache=True)
def _save_edges(flat, saved, r0, r1, width, lo, hi):  # pragma: no cover - compiled
    for r in range(r0, r1):
        for j in range(lo, hi):
            saved[r - r0, j - lo] = flat[r * width + j]


@njit(inline="always", cache=True)
def _restore_edges(flat, saved, r0, r1, width, lo, hi):  # pragma: no cover - compiled
    for r in range(r0, r1):
        for j in range(lo, hi):
            flat[r * width + j] = saved[r - r0, j - lo]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def taps_nchw_flat(src, kernel, dst, ph, pw, dh, dw, rows, sign):  # pragma: no cover - compiled
    """Forward (``sign`` +1) and grad_input (``sign`` -1) for stride 1 and Wo == W: each tap adds
    k * src, shifted by sign*delta, to a chunk of ``rows`` flattened rows of dst.

    +1: dst = out, src = x; out[p] += k[u,v][p] * x[p + delta]
    -1: dst = grad_x, src = grad_out (the gather); grad_x[q] += k[u,v][q - delta] * grad_out[q - delta]
    """
    n_batch, channels, src_rows, width = src.shape
    dst_rows = dst.shape[2]
    groups, kh, kw = kernel.shape[1:4]
    cpg = channels // groups
    plane_src = src_rows * width
    plane_dst = dst_rows * width
    chunks = (dst_rows + rows - 1) // rows
    span = max(pw, (kw - 1) * dw - pw, 1)
    for task in prange(n_batch * groups * chunks):
        n = task // (groups * chunks)
        g = (task // chunks) % groups
        d0 = (task % chunks) * rows
        d1 = min(d0 + rows, dst_rows)
        taps = kernel[n, g].reshape((kh * kw, kernel.shape[4] * kernel.shape[5]))
        saved = np.empty((d1 - d0, span), dst.dtype)
        for cc in range(cpg):
            c = g * cpg + cc
            sf = src[n, c].reshape(plane_src)
            df = dst[n, c].reshape(plane_dst)
            chunk = df[d0 * width : d1 * width]
            for p in range(chunk.size):
                chunk[p] = 0
            for u in range(kh):
                lead = sign * (ph - u * dh)  # dst rows r read src row r - lead: keep it inside
                r0 = max(d0, lead)
                r1 = min(d1, src_rows + lead)
                if r1 <= r0:
                    continue
                for v in range(kw):
                    off = v * dw - pw
                    shift = sign * ((u * dh - ph) * width + off)  # src index - dst index
                    a = max(r0 * width, -shift)
                    b = min(r1 * width, plane_src - shift)
                    if b <= a:
                        continue
                    kshift = shift if sign < 0 else 0  # k follows out: dst (+1) or src (-1)
                    lo, hi = _edge_columns(sign * off, width)
                    _save_edges(df, saved, r0, r1, width, lo, hi)
                    d = df[a:b]
                    k = taps[u * kw + v, a + kshift : b + kshift]
                    xs = sf[a + shift : b + shift]
                    for p in range(b - a):
                        d[p] += k[p] * xs[p]
                    _restore_edges(df, saved, r0, r1, width, lo, hi)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def grad_kernel_nchw_flat(grad_out, x, grad_k, ph, pw, dh, dw, rows):  # pragma: no cover
    """``grad_kernel_nchw`` for stride 1 and Wo == W: grad_k[u,v][p] = sum over the group's
    channels of grad_out[p] * x[p + delta]; one task per (n, g, chunk of rows)."""
    n_batch, channels, height, width = x.shape
    groups, kh, kw, ho, wo = grad_k.shape[1:]
    cpg = channels // groups
    plane_in = height * width
    plane_out = ho * wo
    chunks = (ho + rows - 1) // rows
    for task in prange(n_batch * groups * chunks):
        n = task // (groups * chunks)
        g = (task // chunks) % groups
        i0 = (task % chunks) * rows
        i1 = min(i0 + rows, ho)
        taps = grad_k[n, g].reshape((kh * kw, plane_out))
        for u in range(kh):
            r0 = max(i0, ph - u * dh)
            r1 = min(i1, height + ph - u * dh)
            for v in range(kw):
                gk = taps[u * kw + v]
                for p in range(i0 * wo, i1 * wo):
                    gk[p] = 0
                if r1 <= r0:
                    continue
                off = v * dw - pw
                delta = (u * dh - ph) * width + off
                a = max(r0 * wo, -delta)
                b = min(r1 * wo, plane_in - delta)
                if b <= a:
                    continue
                acc = gk[a:b]
                for cc in range(cpg):
                    c = g * cpg + cc
                    gos = grad_out[n, c].reshape(plane_out)[a:b]
                    xs = x[n, c].reshape(plane_in)[a + delta : b + delta]
                    for p in range(b - a):
                        acc[p] += gos[p] * xs[p]
                lo, hi = _edge_columns(off, width)  # windows off the image: zero by definition
                for r in range(r0, r1):
                    for j in range(lo, hi):
                        gk[r * wo + j] = 0


# ------------------------------------------------------------------------------------------------
# NHWC kernels
# ------------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def taps_nhwc(src, kernel, dst, rows, cols, kernel_at_src):  # pragma: no cover - compiled
    """dst[n,y,x,c] = sum over the taps (u, v) with a = rows[y,u] >= 0 and b = cols[x,v] >= 0 of
    kernel[n,g,u,v,(a,b) if kernel_at_src else (y,x)] * src[n,a,b,c]: the forward (tables from
    ``_taps``, the kernel follows the output) and grad_input (tables from ``_taps_transposed``, a
    gather: the kernel follows grad_out) in NHWC."""
    n_batch, dst_h, dst_w, channels = dst.shape
    groups, kh, kw = kernel.shape[1:4]
    cpg = channels // groups
    nblocks = cpg // _VEC
    zero = np.zeros(1, dst.dtype)[0]
    for task in prange(n_batch * dst_h):
        n = task // dst_h
        y = task % dst_h
        sn = src[n]
        for g in range(groups):  # group outer: its KH*KW kernel rows stay in L1 across the row
            kk = kernel[n, g]
            for xc in range(dst_w):
                dpix = dst[n, y, xc]
                for b in range(nblocks):
                    c0 = g * cpg + b * _VEC
                    acc = (zero, zero, zero, zero, zero, zero, zero, zero)
                    for u in range(kh):
                        a = rows[y, u]
                        if a < 0:
                            continue
                        for v in range(kw):
                            bc = cols[xc, v]
                            if bc < 0:
                                continue
                            ka = a if kernel_at_src else y
                            kb = bc if kernel_at_src else xc
                            acc = _fma8(acc, kk[u, v, ka, kb], sn[a, bc, c0 : c0 + _VEC])
                    _store8(acc, dpix[c0 : c0 + _VEC])
                for c in range(g * cpg + nblocks * _VEC, (g + 1) * cpg):
                    acc1 = zero
                    for u in range(kh):
                        a = rows[y, u]
                        if a < 0:
                            continue
                        for v in range(kw):
                            bc = cols[xc, v]
                            if bc < 0:
                                continue
                            ka = a if kernel_at_src else y
                            kb = bc if kernel_at_src else xc
                            acc1 += kk[u, v, ka, kb] * sn[a, bc, c]
                    dpix[c] = acc1


@njit(cache=True)
def forward_nhwc(x, kernel, out, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    """out [N,Ho,Wo,C] = involution of x [N,H,W,C] with kernel [N,G,KH,KW,Ho,Wo]."""
    height, width = x.shape[1:3]
    kh, kw, ho, wo = kernel.shape[2:]
    rows = _taps(ho, kh, sh, ph, dh, height)
    cols = _taps(wo, kw, sw, pw, dw, width)
    taps_nhwc(x, kernel, out, rows, cols, False)


@njit(cache=True)
def grad_input_nhwc(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw):  # pragma: no cover
    """grad_x [N,H,W,C] from grad_out [N,Ho,Wo,C]: a gather per input pixel, taps from tables."""
    height, width = grad_x.shape[1:3]
    kh, kw, ho, wo = kernel.shape[2:]
    rows = _taps_transposed(height, kh, sh, ph, dh, ho)
    cols = _taps_transposed(width, kw, sw, pw, dw, wo)
    taps_nhwc(grad_out, kernel, grad_x, rows, cols, True)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def grad_kernel_nhwc(grad_out, x, grad_k, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    """grad_k[n,g,u,v,i,j] = dot(grad_out[n,i,j,group g], x[n,ih,jw,group g]) (NHWC operands)."""
    n_batch, height, width, channels = x.shape
    groups, kh, kw, ho, wo = grad_k.shape[1:]
    cpg = channels // groups
    zero = np.zeros(1, grad_k.dtype)[0]
    cols = _col_ranges(kw, pw, dw, sw, width, wo)
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
                lo, hi = cols[v, 0], cols[v, 1]
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

_KERNELS = {  # layout -> op -> kernel
    "nchw": {
        "forward": forward_nchw,
        "grad_input": grad_input_nchw,
        "grad_kernel": grad_kernel_nchw,
    },
    "nhwc": {
        "forward": forward_nhwc,
        "grad_input": grad_input_nhwc,
        "grad_kernel": grad_kernel_nhwc,
    },
}


_FLAT = {  # op -> (kernel, trailing arguments)
    "forward": (taps_nchw_flat, (1,)),
    "grad_input": (taps_nchw_flat, (-1,)),
    "grad_kernel": (grad_kernel_nchw_flat, ()),
}
_FLAT_TASK_ELEMENTS = 2048  # elements per task and channel: long loops, chunk still in L1


def _args(stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    return int(sh), int(sw), int(ph), int(pw), int(dh), int(dw)


def flat_applies(stride, width: int, out_width: int) -> bool:
    """Whether the NCHW flat-plane kernels can run: stride 1 and an output as wide as the input
    (the default padding, dilation*(K-1)//2, for odd K)."""
    return tuple(int(s) for s in stride) == (1, 1) and int(width) == int(out_width)


def _rows_per_task(outer: int, rows: int, width: int) -> int:
    """Rows per flat task: about ``_FLAT_TASK_ELEMENTS`` per chunk, but at least 4 tasks per
    thread where the tensor allows it, so that all threads stay busy."""
    by_size = max(1, _FLAT_TASK_ELEMENTS // max(width, 1))
    by_threads = max(1, (outer * rows) // (4 * get_num_threads()))
    return int(min(by_size, by_threads, rows))


def _dispatch(name, operands, stride, padding, dilation, layout, flat) -> None:
    """Run op ``name`` on ``operands`` (its three arrays, output last): the flat NCHW kernel where
    it applies (``flat`` None) or is asked for, else the ``layout`` kernel."""
    fmap = operands[2] if name == "grad_input" else operands[0]  # shaped like x
    kmap = operands[2] if name == "grad_kernel" else operands[1]  # [N, G, KH, KW, Ho, Wo]
    n, (h, w) = fmap.shape[0], (fmap.shape[1:3] if layout == "nhwc" else fmap.shape[2:])
    g, ho, wo = kmap.shape[1], kmap.shape[4], kmap.shape[5]
    applies = layout == "nchw" and flat_applies(stride, w, wo)
    if flat and not applies:
        raise ValueError(
            f"flat=True needs layout 'nchw', stride (1, 1) and an output as wide as the input, "
            f"got layout {layout!r}, stride {tuple(stride)}, widths {w} -> {wo}"
        )
    sh, sw, ph, pw, dh, dw = _args(stride, padding, dilation)
    if flat is None:
        flat = applies
    if flat:
        rows = _rows_per_task(n * g, h if name == "grad_input" else ho, w)
        kernel, extra = _FLAT[name]
        _run(kernel, *operands, ph, pw, dh, dw, rows, *extra)
    else:
        _run(_KERNELS[layout][name], *operands, sh, sw, ph, pw, dh, dw)


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


def forward(
    x, kernel, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), layout="nchw", flat=None
):
    """Write the involution of ``x`` with ``kernel`` into ``out`` (layout "nchw" or "nhwc";
    ``flat`` None picks the flat-plane NCHW kernels wherever they apply)."""
    _dispatch("forward", (x, kernel, out), stride, padding, dilation, layout, flat)
    return out


def grad_input(
    grad_out,
    kernel,
    grad_x,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    layout="nchw",
    flat=None,
):
    """Write d(loss)/d(x) into ``grad_x`` (the shape of x, in ``layout``)."""
    _dispatch("grad_input", (grad_out, kernel, grad_x), stride, padding, dilation, layout, flat)
    return grad_x


def grad_kernel(
    grad_out, x, grad_k, stride=(1, 1), padding=(0, 0), dilation=(1, 1), layout="nchw", flat=None
):
    """Write d(loss)/d(kernel) into ``grad_k`` [N,G,KH,KW,Ho,Wo]; also the windowed dot product
    sum_{c in g} grad_out[c, i, j] * x[c, i*sh-ph+u*dh, j*sw-pw+v*dw] (local attention logits)."""
    _dispatch("grad_kernel", (grad_out, x, grad_k), stride, padding, dilation, layout, flat)
    return grad_k
