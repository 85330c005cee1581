"""NCHW kernels (x [N, C, H, W]): for small kernels (3x3) and groups of fewer than 8 channels.

One parallel task per (n, g, output row). The innermost loop walks one row of the output, of the
kernel and of the input at once (contiguous for stride 1, so LLVM vectorises it); the tap's valid
column range comes from a per-call table (``col_ranges``), out-of-image rows are skipped. The rows
a task touches stay in cache while the group's C/G channels reuse them.

grad_input, the transpose of the forward (output pixels scatter into the input pixels they read),
is written as a gather: for input row y and tap u the only output row that read y through u is
i = (y + ph - u*dh) / sh, when that is a whole number in range (``gather_table``).
"""

from __future__ import annotations

from numba import njit, prange

from involution.kernels.cpu.tables import FASTMATH, col_ranges, gather_table


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def forward_nchw(x, kernel, out, sh, sw, ph, pw, dh, dw):  # pragma: no cover - compiled
    """out [N,C,Ho,Wo] = involution of x [N,C,H,W] with kernel [N,G,KH,KW,Ho,Wo]."""
    n_batch, channels, height, width = x.shape
    groups, kh, kw, ho, wo = kernel.shape[1:]
    cpg = channels // groups
    cols = col_ranges(kw, pw, dw, sw, width, wo)
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
    cols = col_ranges(kw, pw, dw, sw, width, wo)
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
    cols = col_ranges(kw, pw, dw, sw, width, wo)
    rows = gather_table(height, kh, sh, ph, dh, ho)
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
