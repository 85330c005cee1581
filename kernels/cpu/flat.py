"""NCHW kernels over flattened planes (stride 1, output as wide as the input).

With stride 1 and Wo == W the output and input planes share their row pitch, so tap (u, v) is one
constant shift of the flattened plane: out[p] += k[u,v][p] * x[p + delta], delta =
(u*dh - ph)*W + v*dw - pw. One loop then covers a whole chunk of rows (long, vectorised, no
per-row loop overhead or scalar tail; about 2x faster than the row kernels at 3x3). The price is
the columns where a tap falls off the left or right edge of the image: there the flat shift reads
the neighbouring row. Those few positions are saved before the tap's loop and restored after it
(forward, grad_input) or zeroed (grad_kernel), so every result is exact -- the same sums, in the
same order, as the row kernels; no subtraction, so a NaN or Inf in the neighbouring row never
leaks in.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from involution.kernels.cpu.tables import FASTMATH


def flat_applies(stride, width: int, out_width: int) -> bool:
    """Whether the flat-plane kernels can run: stride 1 and an output as wide as the input
    (the default padding, dilation*(K-1)//2, for odd K)."""
    return tuple(int(s) for s in stride) == (1, 1) and int(width) == int(out_width)


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
    -1: dst = grad_x, src = grad_out (the gather);
        grad_x[q] += k[u,v][q - delta] * grad_out[q - delta]
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
