"""The involution layer's last 1x1 convolution fused with the aggregation: the kernel is made a
row at a time in cache and never exists as an [N, G, KH, KW, Ho, Wo] tensor.

The op, with t = (g * KH + u) * KW + v the tap index of group g::

    kernel[n, t, i, j] = bias[t] + sum_r weight[t, r] * hidden[n, r, i, j]
    out[n, c, i, j]    = sum_{u,v} kernel[n, t(c // (C/G), u, v), i, j]
                                   * x[n, c, i*sh-ph+u*dh, j*sw-pw+v*dw]

and its gradients, with gk the kernel gradient of the plain op (``blocked.grad_kernel_blocked``)::

    grad_x        = grad_input(grad_out, kernel)
    grad_hidden   = weight^T gk              (per pixel)
    grad_weight   = sum over pixels of gk hidden^T
    grad_bias     = sum over pixels of gk

Each task (an image, or a band of its rows) walks its output rows in order. Per row: the hidden
map's row times the weight (``tiles.matmul_rows``, tiles of 4 pixels x 32 taps) gives the
kernel row, which ``tiles.aggregate_row`` applies at once (forward), or which goes into a ring of
the rows that the gather of grad_x needs (backward; a band first regenerates the few rows above
it that its input rows also read). The kernel-gradient rows, made two at a time from shared x
rows (``blocked.kernel_gradient_rows``), each feed the two products and the bias sum, then are
dropped. grad_x is a gather per input row, emitted as soon as the last output row that reads it
is done; no two tasks write one element of grad_x or grad_hidden. grad_weight and grad_bias are
summed per thread into the caller's partial buffers (``partials``; the bias gradient as LANES
lane-wise sums per tap), which the caller adds up.

Padded operands (prepared by ``involution.kernels.cpu.dispatch``): ``weight_t`` is [R, Tp] and
``weight`` [Tp, Rp], ``bias`` [Tp], zero beyond the G*KH*KW taps and the R hidden channels, with Tp
and Rp multiples of LANES (the products' vector width).
"""

from __future__ import annotations

import numpy as np
from numba import get_thread_id, njit, prange

from involution.kernels.cpu.blocked import (
    channel_geometry,
    gather_geometry,
    kernel_gradient_rows,
    padded_width,
)
from involution.kernels.cpu.rows import (
    gather_taps,
    pixel_window,
    pixels_in,
    pixels_out,
    strided,
)
from involution.kernels.cpu.simd import FASTMATH, LANES, add_into, keep_alive, pointer
from involution.kernels.cpu.tiles import aggregate_row, matmul_rows


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def fused_forward(
    x, hidden, weight_t, bias, out, groups, kh, kw, sh, sw, ph, pw, dh, dw, bands
):  # pragma: no cover - compiled
    """out [N, C, Ho, Wo] (any strides) from x [N, C, H, W] and hidden [N, R, Ho, Wo] (any
    strides), weight_t [R, Tp] and bias [Tp] (C-contiguous, zero-padded)."""
    n_batch, channels, height, width = x.shape
    reduced, ho, wo = hidden.shape[1:]
    tp = weight_t.shape[1]
    cpg = channels // groups
    taps = kh * kw
    wp = padded_width(width, wo, sw, pw, kw, dw)
    span = (kh - 1) * dh + 1
    per = (ho + bands - 1) // bands
    src, hsrc, dst = strided(x), strided(hidden), strided(out)
    wtp, bp = pointer(weight_t), pointer(bias)
    for task in prange(n_batch * bands):
        n = task // bands
        i0 = (task % bands) * per
        ring = np.zeros(span * wp * channels, x.dtype)
        held = np.full(span, -1, np.int64)
        h_row = np.empty(wo * reduced, x.dtype)
        k_row = np.empty(wo * tp, x.dtype)
        staged = np.empty(wo * channels if dst[2] != 1 else 0, x.dtype)  # an NCHW out's row
        orp = pointer(staged)
        tap_k, tap_s = np.empty(taps, np.int64), np.empty(taps, np.int64)
        rp, hrp, krp = pointer(ring), pointer(h_row), pointer(k_row)
        size, geometry = (height, width, channels), (kh, kw, dh, dw)
        for i in range(i0, min(ho, i0 + per)):
            top = i * sh - ph
            count = pixel_window(
                rp, held, wp * channels, pw, src, n, size, top, geometry, 1, (tap_k, tap_s)
            )
            pixels_in(hrp, 0, reduced, hsrc, n * hsrc[1] + i * hsrc[3], wo, reduced)
            # the kernel row: kernel[j, t] = bias[t] + sum_r hidden[j, r] weight_t[r, t]
            matmul_rows(
                (krp, 0, tp),
                (hrp, 0, reduced, 1),
                (wtp, 0, tp),
                (wo, reduced, tp),
                2,
                (bp, 0),
                x.dtype,
            )
            at = n * dst[1] + i * dst[3]
            row = (dst[0], at, dst[2], dst[4]) if dst[2] == 1 else (orp, 0, 1, channels)
            aggregate_row(
                row,
                (rp, sw * channels),
                (krp, tp, taps),
                (tap_k, tap_s),
                count,
                (groups, wo, cpg, 0),
                x.dtype,
            )
            if dst[2] != 1:
                pixels_out(dst, at, orp, 0, channels, wo, channels)
        keep_alive((ring, h_row, k_row, staged))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def fused_backward(
    grad_out,
    x,
    hidden,
    weight_t,
    weight,
    bias,
    grad_x,
    grad_hidden,
    partials,
    groups,
    kh,
    kw,
    sh,
    sw,
    ph,
    pw,
    dh,
    dw,
    bands,
):  # pragma: no cover - compiled
    """grad_x [N, C, H, W] and grad_hidden [N, R, Ho, Wo] (any strides) of ``fused_forward``;
    grad_weight (as [Tp, Rp]) and grad_bias (LANES partial sums per tap, in columns Rp to
    Rp + LANES) summed by thread into partials [threads, Tp, Rp + LANES] (zeros on entry; the
    caller adds them up)."""
    n_batch, channels, height, width = x.shape
    reduced, ho, wo = hidden.shape[1:]
    tp, rpad = weight.shape
    cpg = channels // groups
    taps = kh * kw
    total = groups * taps
    lanes, phase_len = channel_geometry(width, wo, sw, pw, kw, dw)
    pitch = sw * phase_len
    span_x = (kh - 1) * dh + 1 + sh  # input rows two output rows read (``dot_rows2``)
    shift = sh // dh if sh % dh == 0 else kh  # row i+1's tap row u - shift is row i's u
    span_o = ((kh - 1) * dh) // sh + 1  # output rows one input row gathers from
    halo = ((kh - 1) * dh + sh - 1) // sh
    jpad, wop = gather_geometry(width, wo, sw, pw, kw, dw)
    per = (ho + bands - 1) // bands
    src, xsrc, hsrc = strided(grad_out), strided(x), strided(hidden)
    dxs, dhs = strided(grad_x), strided(grad_hidden)
    wtp, wp_, bp = pointer(weight_t), pointer(weight), pointer(bias)
    conv = (sh, sw, ph, pw, dh, dw)
    ring = (span_o, jpad, wop * tp, 1, tp, wop * channels, channels)
    size, layout = (height, width, channels), (pitch, phase_len, sw, pw)
    for task in prange(n_batch * bands):
        n = task // bands
        band = task % bands
        i0 = band * per
        i1 = min(ho, i0 + per)
        part = partials[get_thread_id()]
        pp = pointer(part)
        x_ring = np.zeros(span_x * channels * pitch, x.dtype)
        x_held = np.full(span_x, -1, np.int64)
        k_ring = np.zeros(span_o * wop * tp, x.dtype)
        go_ring = np.zeros(span_o * wop * channels, x.dtype)
        go_rows = np.zeros(2 * channels * lanes, x.dtype)  # output rows in pairs
        gk_rows = np.zeros(2 * tp * lanes, x.dtype)  # rows from G*KH*KW on stay zero
        h_row = np.zeros(wo * rpad, x.dtype)
        dh_row = np.empty(wo * rpad, x.dtype)
        staged = np.empty(width * channels if dxs[2] != 1 else 0, x.dtype)  # an NCHW grad_x's row
        orp = pointer(staged)
        roff, roff_b, offs = np.empty(kh, np.int64), np.empty(kh, np.int64), np.empty(4, np.int64)
        tap_k, tap_s = np.empty(taps, np.int64), np.empty(taps, np.int64)
        xrp, krp, grp = pointer(x_ring), pointer(k_ring), pointer(go_ring)
        gop, gkp, hrp, dhr = pointer(go_rows), pointer(gk_rows), pointer(h_row), pointer(dh_row)
        for i in range(max(0, i0 - halo), i1):
            slot = i % span_o
            # kernel and grad_out rows into their rings (the band's rows and the halo above it)
            pixels_in(hrp, 0, rpad, hsrc, n * hsrc[1] + i * hsrc[3], wo, reduced)
            kat = (slot * wop + jpad) * tp
            matmul_rows(
                (krp, kat, tp),
                (hrp, 0, rpad, 1),
                (wtp, 0, tp),
                (wo, reduced, tp),
                2,
                (bp, 0),
                x.dtype,
            )
            go_at = (slot * wop + jpad) * channels
            pixels_in(grp, go_at, channels, src, n * src[1] + i * src[3], wo, channels)
            if i < i0:
                continue
            # the kernel gradient's rows, two at a time (the first of a pair computes both), and
            # what each gives grad_hidden, grad_weight, grad_bias
            shape = (groups, kh, kw, lanes, cpg)
            if (i - i0) % 2 == 0:
                gks = (gkp, 0, tp * lanes, lanes, lanes)
                xs = (xrp, x_held, layout, xsrc, size, roff, roff_b)
                window = (n, sh, ph, sw, dh, dw, wo)
                pair = i + 1 < i1
                kernel_gradient_rows(
                    gks, (gop, src), xs, window, i, pair, shape, shift, offs, x.dtype
                )
            gka = (i - i0) % 2 * tp * lanes  # this row's kernel-gradient rows
            # grad_hidden[j, r] = sum_t gk[t, j] weight[t, r]
            matmul_rows(
                (dhr, 0, rpad),
                (gkp, gka, 1, lanes),
                (wp_, 0, rpad),
                (wo, tp, rpad),
                0,
                (bp, 0),
                x.dtype,
            )
            pixels_out(dhs, n * dhs[1] + i * dhs[3], dhr, 0, rpad, wo, reduced)
            # grad_weight[t, r] += sum_j gk[t, j] hidden[j, r]; grad_bias[t] += sum_j gk[t, j]
            matmul_rows(
                (pp, 0, rpad + LANES),
                (gkp, gka, lanes, 1),
                (hrp, 0, rpad),
                (total, wo, rpad),
                1,
                (bp, 0),
                x.dtype,
            )
            for t in range(total):  # lane-wise partial sums; the caller adds the lanes
                for jv in range(lanes // LANES):
                    add_into(pp, t * (rpad + LANES) + rpad, gkp, gka + t * lanes + jv * LANES)
            # grad_x rows whose last reading output row is i (after the last row: the rows
            # below it too), a gather over the rings of kernel and grad_out rows
            y_last = min(height, i * sh - ph + sh) if i < ho - 1 else height
            for y in range(max(0, i * sh - ph), y_last):
                for q in range(min(sw, width)):
                    count = gather_taps(y, q, conv, kh, kw, ho, ring, (tap_k, tap_s))
                    if dxs[2] == 1:
                        at = n * dxs[1] + y * dxs[3] + q * dxs[4]
                        row = (dxs[0], at, 1, sw * dxs[4])
                    else:
                        row = (orp, q * channels, 1, sw * channels)
                    shape = (groups, (width - q + sw - 1) // sw, cpg, 0)  # tiles per group: as fast
                    aggregate_row(
                        row, (grp, channels), (krp, tp, taps), (tap_k, tap_s), count, shape, x.dtype
                    )
                if dxs[2] != 1:
                    pixels_out(dxs, n * dxs[1] + y * dxs[3], orp, 0, channels, width, channels)
        keep_alive((x_ring, k_ring, go_ring, go_rows, gk_rows, h_row, dh_row, staged))


def partials_shape(threads: int, taps_padded: int, reduced_padded: int) -> tuple[int, int, int]:
    """The shape of ``fused_backward``'s per-thread buffer for grad_weight and grad_bias."""
    return threads, taps_padded, reduced_padded + LANES
