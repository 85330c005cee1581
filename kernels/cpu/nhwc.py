"""NHWC kernels (x [N, H, W, C]): for >= 8 channels per group and 5x5 and up (groups of a
multiple of 16 channels, RedNet's, run the blocked kernels instead).

The vector dimension is the group's channels, so the speed does not depend on the image width:
each output pixel accumulates its taps in registers, 8 channels at a time (``_fma8``), with the
valid taps looked up in small per-axis tables (``tap_table``, ``gather_table``), so the innermost
work has no bounds test. Away from the left and right borders, 4 neighbouring pixels are
accumulated together (independent FMA chains; ``taps_nhwc``). The 8-scalar accumulator tuples
become vector FMAs only with LLVM's SLP vectoriser on, which ``involution.kernels.cpu.dispatch``
switches on when it compiles them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from involution.kernels.cpu.tables import (
    FASTMATH,
    col_range,
    col_ranges,
    gather_table,
    tap_table,
)

VEC = 8  # channels per register block (one AVX2 register of float32)


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


PIXELS = 4  # output pixels per register block of the interior loop


@njit(cache=True)
def interior(step, offsets, src_w, dst_w):  # pragma: no cover - compiled
    """[lo, hi): the dst columns xc whose every tap column xc*step + offsets[v] lies in
    [0, src_w) (col_range per tap, intersected)."""
    lo, hi = 0, dst_w
    for off in offsets:
        a, b = col_range(off, step, src_w, dst_w)
        lo = max(lo, a)
        hi = min(hi, b)
    return lo, max(lo, hi)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def taps_nhwc(
    src, kernel, dst, rows, cols, kernel_at_src, step, offsets, lo, hi
):  # pragma: no cover - compiled
    """dst[n,y,x,c] = sum over the taps (u, v) with a = rows[y,u] >= 0 and b = cols[x,v] >= 0 of
    kernel[n,g,u,v,(a,b) if kernel_at_src else (y,x)] * src[n,a,b,c]: the forward (tables from
    ``tap_table``, the kernel follows the output) and grad_input (tables from ``gather_table``, a
    gather: the kernel follows grad_out) in NHWC.

    Columns [lo, hi) are interior: every tap of column x reads src column x*step + offsets[v]
    (``interior``; lo = hi where no such formula holds, the strided gather). There, blocks of
    ``PIXELS`` neighbouring pixels times two 8-channel blocks accumulate in 8 independent
    registers: one accumulator per pixel was a chain of dependent FMAs, as slow as their latency.
    Every pixel sums its taps in the same (u, v) order either way, so the blocks change no bit of
    the result."""
    n_batch, dst_h, dst_w, channels = dst.shape
    groups, kh, kw = kernel.shape[1:4]
    cpg = channels // groups
    nblocks = cpg // VEC
    zero = np.zeros(1, dst.dtype)[0]
    z = (zero, zero, zero, zero, zero, zero, zero, zero)
    nfull = (hi - lo) // PIXELS if nblocks > 0 else 0
    kinc = step if kernel_at_src else 1  # kernel columns between neighbouring pixels
    blocked_hi = lo + nfull * PIXELS
    for task in prange(n_batch * dst_h):
        n = task // dst_h
        y = task % dst_h
        sn = src[n]
        drow = dst[n, y]
        for g in range(groups):  # group outer: its KH*KW kernel rows stay in L1 across the row
            kk = kernel[n, g]
            for blk in range(nfull):
                x0 = lo + blk * PIXELS
                b = 0
                while b < nblocks:
                    two = b + 1 < nblocks  # two blocks (8 chains), or the odd last one (4)
                    c0 = g * cpg + b * VEC
                    c1 = c0 + VEC
                    c2 = c1 + VEC
                    a00 = z
                    a01 = z
                    a02 = z
                    a03 = z
                    a10 = z
                    a11 = z
                    a12 = z
                    a13 = z
                    for u in range(kh):
                        a = rows[y, u]
                        if a < 0:
                            continue
                        srow = sn[a]
                        ka = a if kernel_at_src else y
                        for v in range(kw):
                            bc = x0 * step + offsets[v]
                            kr = kk[u, v, ka]
                            kb = bc if kernel_at_src else x0
                            k0 = kr[kb]
                            k1 = kr[kb + kinc]
                            k2 = kr[kb + 2 * kinc]
                            k3 = kr[kb + 3 * kinc]
                            a00 = _fma8(a00, k0, srow[bc, c0:c1])
                            a01 = _fma8(a01, k1, srow[bc + step, c0:c1])
                            a02 = _fma8(a02, k2, srow[bc + 2 * step, c0:c1])
                            a03 = _fma8(a03, k3, srow[bc + 3 * step, c0:c1])
                            if two:
                                a10 = _fma8(a10, k0, srow[bc, c1:c2])
                                a11 = _fma8(a11, k1, srow[bc + step, c1:c2])
                                a12 = _fma8(a12, k2, srow[bc + 2 * step, c1:c2])
                                a13 = _fma8(a13, k3, srow[bc + 3 * step, c1:c2])
                    _store8(a00, drow[x0, c0:c1])
                    _store8(a01, drow[x0 + 1, c0:c1])
                    _store8(a02, drow[x0 + 2, c0:c1])
                    _store8(a03, drow[x0 + 3, c0:c1])
                    if two:
                        _store8(a10, drow[x0, c1:c2])
                        _store8(a11, drow[x0 + 1, c1:c2])
                        _store8(a12, drow[x0 + 2, c1:c2])
                        _store8(a13, drow[x0 + 3, c1:c2])
                    b += 2
            for xc in range(dst_w):
                dpix = drow[xc]
                blocked = lo <= xc < blocked_hi
                for b in range(0 if not blocked else nblocks, nblocks):
                    c0 = g * cpg + b * VEC
                    acc = z
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
                            acc = _fma8(acc, kk[u, v, ka, kb], sn[a, bc, c0 : c0 + VEC])
                    _store8(acc, dpix[c0 : c0 + VEC])
                for c in range(g * cpg + nblocks * VEC, (g + 1) * cpg):
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
    rows = tap_table(ho, kh, sh, ph, dh, height)
    cols = tap_table(wo, kw, sw, pw, dw, width)
    offsets = np.arange(kw) * dw - pw  # output column j, tap v reads input column j*sw + offset
    lo, hi = interior(sw, offsets, width, wo)
    taps_nhwc(x, kernel, out, rows, cols, False, sw, offsets, lo, hi)


@njit(cache=True)
def grad_input_nhwc(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw):  # pragma: no cover
    """grad_x [N,H,W,C] from grad_out [N,Ho,Wo,C]: a gather per input pixel, taps from tables."""
    height, width = grad_x.shape[1:3]
    kh, kw, ho, wo = kernel.shape[2:]
    rows = gather_table(height, kh, sh, ph, dh, ho)
    cols = gather_table(width, kw, sw, pw, dw, wo)
    offsets = pw - np.arange(kw) * dw  # stride 1: input column x, tap v gathers x + offset
    lo, hi = interior(1, offsets, wo, width) if sw == 1 else (0, 0)
    taps_nhwc(grad_out, kernel, grad_x, rows, cols, True, 1, offsets, lo, hi)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def grad_kernel_nhwc(grad_out, x, grad_k, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    """grad_k[n,g,u,v,i,j] = dot(grad_out[n,i,j,group g], x[n,ih,jw,group g]) (NHWC operands)."""
    n_batch, height, width, channels = x.shape
    groups, kh, kw, ho, wo = grad_k.shape[1:]
    cpg = channels // groups
    zero = np.zeros(1, grad_k.dtype)[0]
    cols = col_ranges(kw, pw, dw, sw, width, wo)
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
