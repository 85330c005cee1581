"""The op's three kernels with register tiles, for groups of a multiple of LANES channels.

RedNet's groups have 16 channels: one AVX-512 vector of float32 (two of AVX2). These kernels
compute in the layouts their tiles want, whatever the operands' memory layout (NCHW or NHWC, any
strides): each task (an image, or a band of its rows where the batch is too small to keep every
thread busy) walks its rows in order and keeps the few operand rows a window needs in a ring of
zero-padded rows (``rows``), so no tap needs a bounds test, and the kernel rows it reads are
copied next to each other first (in the [N, G, KH, KW, Ho, Wo] tensor a pixel's 49 values lie a
plane apart, 49 pages for one tile at 56x56).

- ``forward_blocked``: per output row, ``tiles.aggregate_row`` over the taps inside the image;
- ``grad_input_blocked``: per input row, a gather (each input pixel sums the taps whose output
  pixel exists, one phase of the stride at a time): no two tasks write one element;
- ``grad_kernel_blocked``: per output row, ``tiles.dot_row`` from channel rows of x and grad_out.

Every sum runs in the order of ``generic``'s loops (taps in (u, v) order; channels in order),
one fused multiply-add per term: the results are those loops' bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from involution.kernels.cpu.rows import channels_in, copy_run, element_strides, pixels_in
from involution.kernels.cpu.simd import FASTMATH, LANES, pointer
from involution.kernels.cpu.tiles import aggregate_row, dot_row


def blocked_applies(channels_per_group: int) -> bool:
    """Whether the blocked kernels run a group of this width (a whole number of LANES)."""
    return channels_per_group >= LANES and channels_per_group % LANES == 0


@njit(cache=True)
def padded_width(width, wo, sw, pw, kw, dw):  # pragma: no cover - compiled
    """Columns of a zero-padded pixel row: the image after ``pw`` zeros, and every column a tap
    of an output pixel reads (j * sw + v * dw in padded coordinates)."""
    return max(width + pw, (wo - 1) * sw + (kw - 1) * dw + 1)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def forward_blocked(x, kernel, out, sh, sw, ph, pw, dh, dw, bands):  # pragma: no cover
    """out [N, C, Ho, Wo] (any strides) = involution of x [N, C, H, W] (any strides) with the
    C-contiguous kernel [N, G, KH, KW, Ho, Wo]; ``bands`` tasks per image."""
    n_batch, channels, height, width = x.shape
    groups, kh, kw, ho, wo = kernel.shape[1:]
    cpg = channels // groups
    xs_n, xs_c, xs_h, xs_w = element_strides(x)
    os_n, os_c, os_h, os_w = element_strides(out)
    taps = kh * kw
    plane = ho * wo
    wp = padded_width(width, wo, sw, pw, kw, dw)
    span = (kh - 1) * dh + 1
    per = (ho + bands - 1) // bands
    xp = pointer(x)
    kp = pointer(kernel)
    opn = pointer(out)
    for task in prange(n_batch * bands):
        n = task // bands
        i0 = (task % bands) * per
        i1 = min(ho, i0 + per)
        ring = np.zeros(span * wp * channels, x.dtype)
        held = np.full(span, -1, np.int64)
        krow = np.empty(groups * taps * wo, x.dtype)
        tap_k = np.empty(taps, np.int64)
        tap_s = np.empty(taps, np.int64)
        rp = pointer(ring)
        krp = pointer(krow)
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
                    tap_k[count] = (u * kw + v) * wo
                    tap_s[count] = at + v * dw * channels
                    count += 1
            base = n * groups * taps * plane + i * wo
            for t in range(groups * taps):
                copy_run(krp, t * wo, kp, base + t * plane, wo)
            aggregate_row(
                opn,
                n * os_n + i * os_h,
                os_c,
                os_w,
                rp,
                sw * channels,
                krp,
                1,
                taps * wo,
                tap_k,
                tap_s,
                count,
                groups,
                wo,
                cpg,
                x.dtype,
            )


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def grad_input_blocked(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw, bands):  # pragma: no cover
    """grad_x [N, C, H, W] (any strides) from grad_out [N, C, Ho, Wo] (any strides) and the
    C-contiguous kernel: each input pixel gathers kernel * grad_out over the taps (u, v) whose
    output pixel i = (y + ph - u*dh) / sh, j = (x + pw - v*dw) / sw is whole and in range."""
    n_batch, channels, height, width = grad_x.shape
    groups, kh, kw, ho, wo = kernel.shape[1:]
    cpg = channels // groups
    gs_n, gs_c, gs_h, gs_w = element_strides(grad_out)
    xs_n, xs_c, xs_h, xs_w = element_strides(grad_x)
    taps = kh * kw
    plane = ho * wo
    jpad = ((kw - 1) * dw) // sw + 1  # zero columns left of output column 0
    wop = jpad + max(wo, (width - 1 + pw) // sw + 1) + 1
    span = ((kh - 1) * dh) // sh + 1  # output rows one input row reads
    per = (height + bands - 1) // bands
    gp = pointer(grad_out)
    kp = pointer(kernel)
    xp = pointer(grad_x)
    for task in prange(n_batch * bands):
        n = task // bands
        y0 = (task % bands) * per
        y1 = min(height, y0 + per)
        go_ring = np.zeros(span * wop * channels, grad_out.dtype)
        k_ring = np.zeros(span * groups * taps * wop, grad_out.dtype)
        held = np.full(span, -1, np.int64)
        tap_k = np.empty(taps, np.int64)
        tap_s = np.empty(taps, np.int64)
        grp = pointer(go_ring)
        krp = pointer(k_ring)
        for y in range(y0, y1):
            for u in range(kh):
                num = y + ph - u * dh
                if num < 0 or num % sh != 0 or num // sh >= ho:
                    continue
                i = num // sh
                slot = i % span
                if held[slot] != i:
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
                    base = n * groups * taps * plane + i * wo
                    for t in range(groups * taps):
                        copy_run(
                            krp, (slot * groups * taps + t) * wop + jpad, kp, base + t * plane, wo
                        )
                    held[slot] = i
            for q in range(min(sw, width)):  # input columns x = q + sw * m
                count = 0
                for u in range(kh):
                    num = y + ph - u * dh
                    if num < 0 or num % sh != 0 or num // sh >= ho:
                        continue
                    slot = (num // sh) % span
                    for v in range(kw):
                        col = q + pw - v * dw
                        if col % sw != 0:
                            continue
                        j = col // sw + jpad  # padded output column of m = 0
                        tap_k[count] = (slot * groups * taps + u * kw + v) * wop + j
                        tap_s[count] = (slot * wop + j) * channels
                        count += 1
                aggregate_row(
                    xp,
                    n * xs_n + y * xs_h + q * xs_w,
                    xs_c,
                    sw * xs_w,
                    grp,
                    channels,
                    krp,
                    1,
                    taps * wop,
                    tap_k,
                    tap_s,
                    count,
                    groups,
                    (width - q + sw - 1) // sw,
                    cpg,
                    grad_out.dtype,
                )


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def grad_kernel_blocked(grad_out, x, grad_k, sh, sw, ph, pw, dh, dw, bands):  # pragma: no cover
    """grad_k [N, G, KH, KW, Ho, Wo] (C-contiguous) = the group sums of grad_out [N, C, Ho, Wo]
    times the windows of x [N, C, H, W] (both any strides): ``tiles.dot_row`` per output row,
    from channel rows (split by the phase of the stride) and grad_out's row as [channel][pixel]."""
    n_batch, channels, height, width = x.shape
    groups, kh, kw, ho, wo = grad_k.shape[1:]
    cpg = channels // groups
    gs_n, gs_c, gs_h, gs_w = element_strides(grad_out)
    xs_n, xs_c, xs_h, xs_w = element_strides(x)
    taps = kh * kw
    plane = ho * wo
    lanes = (wo + LANES - 1) // LANES * LANES
    phase_len = max(lanes + ((kw - 1) * dw) // sw + 1, (width - 1 + pw) // sw + 1)
    pitch = sw * phase_len  # one channel row
    span = (kh - 1) * dh + 1
    per = (ho + bands - 1) // bands
    gp = pointer(grad_out)
    xp = pointer(x)
    kp = pointer(grad_k)
    for task in prange(n_batch * bands):
        n = task // bands
        i0 = (task % bands) * per
        i1 = min(ho, i0 + per)
        ring = np.zeros(span * channels * pitch, x.dtype)
        held = np.full(span, -1, np.int64)
        go_row = np.zeros(channels * lanes, x.dtype)
        gk_row = np.empty(groups * taps * lanes, x.dtype)
        roff = np.empty(kh, np.int64)
        offs = np.empty(4, np.int64)
        rp = pointer(ring)
        grp = pointer(go_row)
        krp = pointer(gk_row)
        for i in range(i0, i1):
            for u in range(kh):
                y = i * sh - ph + u * dh
                if y < 0 or y >= height:
                    roff[u] = -1
                    continue
                at = (y % span) * channels * pitch
                if held[y % span] != y:
                    channels_in(
                        rp,
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
                    held[y % span] = y
                roff[u] = at
            channels_in(
                grp, 0, lanes, lanes, 1, 0, gp, n * gs_n + i * gs_h, gs_c, gs_w, wo, channels
            )
            dot_row(
                krp,
                0,
                lanes,
                grp,
                lanes,
                rp,
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
            base = n * groups * taps * plane + i * wo
            for t in range(groups * taps):
                copy_run(kp, base + t * plane, krp, t * lanes, wo)
