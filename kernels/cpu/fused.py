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
it that its input rows also read). The kernel-gradient row from ``tiles.dot_row`` feeds the two
products and the bias sum, then is dropped. grad_x is a gather per input row, emitted as soon as
the last output row that reads it is done; no two tasks write one element of grad_x or
grad_hidden. grad_weight and grad_bias are summed per thread into the caller's partial buffers
(``partials``), which the caller adds up.

Padded operands (prepared by ``involution.kernels.cpu.dispatch``): ``weight_t`` is [R, Tp] and
``weight`` [Tp, Rp], ``bias`` [Tp], zero beyond the G*KH*KW taps and the R hidden channels, with Tp
and Rp multiples of LANES (the products' vector width).
"""

from __future__ import annotations

import numpy as np
from numba import get_thread_id, njit, prange

from involution.kernels.cpu.blocked import padded_width
from involution.kernels.cpu.rows import channels_in, element_strides, pixels_in, pixels_out
from involution.kernels.cpu.simd import FASTMATH, LANES, pointer
from involution.kernels.cpu.tiles import aggregate_row, dot_row, matmul_rows


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
    xs_n, xs_c, xs_h, xs_w = element_strides(x)
    hs_n, hs_c, hs_h, hs_w = element_strides(hidden)
    os_n, os_c, os_h, os_w = element_strides(out)
    taps = kh * kw
    wp = padded_width(width, wo, sw, pw, kw, dw)
    span = (kh - 1) * dh + 1
    per = (ho + bands - 1) // bands
    xp = pointer(x)
    hp = pointer(hidden)
    wtp = pointer(weight_t)
    bp = pointer(bias)
    opn = pointer(out)
    for task in prange(n_batch * bands):
        n = task // bands
        i0 = (task % bands) * per
        i1 = min(ho, i0 + per)
        ring = np.zeros(span * wp * channels, x.dtype)
        held = np.full(span, -1, np.int64)
        h_row = np.empty(wo * reduced, x.dtype)
        k_row = np.empty(wo * tp, x.dtype)
        tap_k = np.empty(taps, np.int64)
        tap_s = np.empty(taps, np.int64)
        rp = pointer(ring)
        hrp = pointer(h_row)
        krp = pointer(k_row)
        for i in range(i0, i1):
            count = 0
            for u in range(kh):
                y = i * sh - ph + u * dh
                if y < 0 or y >= height:
                    continue
                at = (y % span) * wp * channels
                if held[y % span] != y:
                    pixels_in(
                        rp,
                        at + pw * channels,
                        channels,
                        xp,
                        n * xs_n + y * xs_h,
                        xs_c,
                        xs_w,
                        width,
                        channels,
                    )
                    held[y % span] = y
                for v in range(kw):
                    tap_k[count] = u * kw + v
                    tap_s[count] = at + v * dw * channels
                    count += 1
            pixels_in(hrp, 0, reduced, hp, n * hs_n + i * hs_h, hs_c, hs_w, wo, reduced)
            matmul_rows(
                krp, 0, tp, hrp, 0, reduced, 1, wtp, 0, tp, wo, reduced, tp, 2, bp, 0, x.dtype
            )
            aggregate_row(
                opn,
                n * os_n + i * os_h,
                os_c,
                os_w,
                rp,
                sw * channels,
                krp,
                tp,
                taps,
                tap_k,
                tap_s,
                count,
                groups,
                wo,
                cpg,
                x.dtype,
            )


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
    grad_weight (as [Tp, Rp]) and grad_bias ([Tp], in column Rp) summed by thread into
    partials [threads, Tp, Rp + 1] (zeros on entry; the caller adds them up)."""
    n_batch, channels, height, width = x.shape
    reduced, ho, wo = hidden.shape[1:]
    tp, rpad = weight.shape
    cpg = channels // groups
    xs_n, xs_c, xs_h, xs_w = element_strides(x)
    hs_n, hs_c, hs_h, hs_w = element_strides(hidden)
    gs_n, gs_c, gs_h, gs_w = element_strides(grad_out)
    dx_n, dx_c, dx_h, dx_w = element_strides(grad_x)
    dh_n, dh_c, dh_h, dh_w = element_strides(grad_hidden)
    taps = kh * kw
    total = groups * taps
    lanes = (wo + LANES - 1) // LANES * LANES
    phase_len = max(lanes + ((kw - 1) * dw) // sw + 1, (width - 1 + pw) // sw + 1)
    pitch = sw * phase_len
    span_x = (kh - 1) * dh + 1  # input rows one output row reads
    span_o = ((kh - 1) * dh) // sh + 1  # output rows one input row gathers from
    halo = ((kh - 1) * dh + sh - 1) // sh
    jpad = ((kw - 1) * dw) // sw + 1
    wop = jpad + max(wo, (width - 1 + pw) // sw + 1) + 1
    per = (ho + bands - 1) // bands
    gp = pointer(grad_out)
    xp = pointer(x)
    hp = pointer(hidden)
    wtp = pointer(weight_t)
    wp_ = pointer(weight)
    bp = pointer(bias)
    dxp = pointer(grad_x)
    dhp = pointer(grad_hidden)
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
        go_row = np.zeros(channels * lanes, x.dtype)
        gk_row = np.zeros(tp * lanes, x.dtype)
        h_row = np.zeros(wo * rpad, x.dtype)
        dh_row = np.empty(wo * rpad, x.dtype)
        roff = np.empty(kh, np.int64)
        offs = np.empty(4, np.int64)
        tap_k = np.empty(taps, np.int64)
        tap_s = np.empty(taps, np.int64)
        xrp = pointer(x_ring)
        krp = pointer(k_ring)
        grp = pointer(go_ring)
        gop = pointer(go_row)
        gkp = pointer(gk_row)
        hrp = pointer(h_row)
        dhr = pointer(dh_row)
        for i in range(max(0, i0 - halo), i1):
            slot = i % span_o
            pixels_in(hrp, 0, rpad, hp, n * hs_n + i * hs_h, hs_c, hs_w, wo, reduced)
            matmul_rows(
                krp,
                (slot * wop + jpad) * tp,
                tp,
                hrp,
                0,
                rpad,
                1,
                wtp,
                0,
                tp,
                wo,
                reduced,
                tp,
                2,
                bp,
                0,
                x.dtype,
            )
            pixels_in(
                grp,
                (slot * wop + jpad) * channels,
                channels,
                gp,
                n * gs_n + i * gs_h,
                gs_c,
                gs_w,
                wo,
                channels,
            )
            if i >= i0:
                for u in range(kh):
                    y = i * sh - ph + u * dh
                    if y < 0 or y >= height:
                        roff[u] = -1
                        continue
                    at = (y % span_x) * channels * pitch
                    if x_held[y % span_x] != y:
                        channels_in(
                            xrp,
                            at,
                            pitch,
                            phase_len,
                            sw,
                            pw,
                            xp,
                            n * xs_n + y * xs_h,
                            xs_c,
                            xs_w,
                            width,
                            channels,
                        )
                        x_held[y % span_x] = y
                    roff[u] = at
                channels_in(
                    gop, 0, lanes, lanes, 1, 0, gp, n * gs_n + i * gs_h, gs_c, gs_w, wo, channels
                )
                dot_row(
                    gkp,
                    0,
                    lanes,
                    gop,
                    lanes,
                    xrp,
                    roff,
                    pitch,
                    phase_len,
                    groups,
                    kh,
                    kw,
                    lanes,
                    cpg,
                    sw,
                    dw,
                    offs,
                    x.dtype,
                )
                # grad_hidden[j, r] = sum_t gk[t, j] weight[t, r]
                matmul_rows(
                    dhr, 0, rpad, gkp, 0, 1, lanes, wp_, 0, rpad, wo, tp, rpad, 0, bp, 0, x.dtype
                )
                pixels_out(dhp, n * dh_n + i * dh_h, dh_c, dh_w, dhr, 0, rpad, wo, reduced)
                # grad_weight[t, r] += sum_j gk[t, j] hidden[j, r]; grad_bias[t] += sum_j gk[t, j]
                matmul_rows(
                    pp,
                    0,
                    rpad + 1,
                    gkp,
                    0,
                    lanes,
                    1,
                    hrp,
                    0,
                    rpad,
                    total,
                    wo,
                    rpad,
                    1,
                    bp,
                    0,
                    x.dtype,
                )
                for t in range(total):
                    acc = part[t, rpad]
                    for j in range(wo):
                        acc += gk_row[t * lanes + j]
                    part[t, rpad] = acc
            # grad_x rows whose last reading output row is i (and, after the last row, the rows
            # below it): a gather over the ring of kernel and grad_out rows
            if i < i0:
                continue
            y_first = max(0, i * sh - ph)
            y_last = min(height, i * sh - ph + sh) if i < ho - 1 else height
            if i == i0 and band == 0:
                y_first = 0
            for y in range(y_first, y_last):
                for q in range(min(sw, width)):
                    count = 0
                    for u in range(kh):
                        num = y + ph - u * dh
                        if num < 0 or num % sh != 0 or num // sh >= ho:
                            continue
                        s = (num // sh) % span_o
                        for v in range(kw):
                            col = q + pw - v * dw
                            if col % sw != 0:
                                continue
                            j = col // sw + jpad
                            tap_k[count] = (s * wop + j) * tp + u * kw + v
                            tap_s[count] = (s * wop + j) * channels
                            count += 1
                    aggregate_row(
                        dxp,
                        n * dx_n + y * dx_h + q * dx_w,
                        dx_c,
                        sw * dx_w,
                        grp,
                        channels,
                        krp,
                        tp,
                        taps,
                        tap_k,
                        tap_s,
                        count,
                        groups,
                        (width - q + sw - 1) // sw,
                        cpg,
                        x.dtype,
                    )


def partials_shape(threads: int, taps_padded: int, reduced_padded: int) -> tuple[int, int, int]:
    """The shape of ``fused_backward``'s per-thread buffer for grad_weight and grad_bias."""
    return threads, taps_padded, reduced_padded + 1


_ = np  # arrays are allocated per task above
