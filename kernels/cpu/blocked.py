"""The op's three kernels with register tiles, for groups of a multiple of LANES channels.

RedNet's groups have 16 channels: one AVX-512 vector of float32 (two of AVX2). These kernels
compute in the layouts their tiles want, whatever the operands' memory layout (NCHW or NHWC, any
strides): each task (an image, or a band of its rows where the batch is too small to keep every
thread busy) walks its rows in order and keeps the few feature-map rows a window needs in a ring
of zero-padded rows (``rows``), so no tap needs a bounds test. The [N, G, KH, KW, Ho, Wo] kernel
tensor, the largest operand, is read (forward, grad_input) and written (grad_kernel) where it
lies: a tap's values for one row are a contiguous run, each touched once (copying the runs
through a row buffer cost a third to a half of each kernel's time).

- ``forward_blocked``: per output row, ``tiles.aggregate_row`` over the taps inside the image;
- ``grad_input_blocked``: per input row, a gather (each input pixel sums the taps whose output
  pixel exists, one phase of the stride at a time): no two tasks write one element;
- ``grad_kernel_blocked``: per pair of output rows, ``tiles.dot_rows2`` from channel rows of x
  and grad_out (``kernel_gradient_rows``), stored straight into grad_k (a row's last partial
  vector with a masked store).

Every sum runs in the order of ``generic``'s loops (taps in (u, v) order; channels in order),
one fused multiply-add per term: the results are those loops' bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from involution.kernels.cpu.rows import (
    channel_window,
    channels_in,
    gather_kernel_taps,
    pixel_window,
    pixels_in,
    pixels_out,
    strided,
)
from involution.kernels.cpu.simd import FASTMATH, LANES, keep_alive, pointer
from involution.kernels.cpu.tiles import aggregate_pixel, aggregate_row, dot_row, dot_rows2


def blocked_applies(channels_per_group: int) -> bool:
    """Whether the blocked kernels run a group of this width (a whole number of LANES)."""
    return channels_per_group >= LANES and channels_per_group % LANES == 0


@njit(cache=True)
def padded_width(width, wo, sw, pw, kw, dw):  # pragma: no cover - compiled
    """Columns of a zero-padded pixel row: the image after ``pw`` zeros, and every column a tap
    of an output pixel reads (j * sw + v * dw in padded coordinates)."""
    return max(width + pw, (wo - 1) * sw + (kw - 1) * dw + 1)


@njit(cache=True)
def gather_geometry(width, wo, sw, pw, kw, dw):  # pragma: no cover - compiled
    """(jpad, wop): zero columns left of output column 0 in a ring row of the gather, and the
    row's length, so that every output column a gather tap reads lies in the row."""
    jpad = ((kw - 1) * dw) // sw + 1
    return jpad, jpad + max(wo, (width - 1 + pw) // sw + 1) + 1


@njit(cache=True)
def channel_geometry(width, wo, sw, pw, kw, dw):  # pragma: no cover - compiled
    """(lanes, phase_len): the kernel-gradient row's length in whole vectors and the length of
    one phase of a channel row, so that every tap of every lane lies in the row."""
    lanes = (wo + LANES - 1) // LANES * LANES
    return lanes, max(lanes + ((kw - 1) * dw) // sw + 1, (width - 1 + pw) // sw + 1)


@njit(cache=True)
def kernel_gradient_rows(gk, go, x, window, i, pair, shape, shift, offs, dtype):  # pragma: no cover
    """The kernel gradient of output row i, and of row i + 1 with it where ``pair`` (one tile
    for both: ``tiles.dot_rows2``; ``shift``: row i + 1's tap row u - shift reads row i's tap
    row u): the rows' x windows into the ring, their grad_out rows as channel rows, then the
    tiles into ``gk`` = (pointer, offset of row i, offset of row i + 1, stride of a tap row,
    pixels stored per tap row).

    ``go`` = (pointer to two [channel][lanes] rows, ``strided`` grad_out); ``x`` = (ring
    pointer, held, layout, ``strided`` x, size, roff, roff_b) as ``rows.channel_window`` takes
    them; ``window`` = (n, sh, ph, sw, dh, dw, wo); ``shape`` = (groups, kh, kw, lanes, cpg)."""
    gp, ga, gb, t_pitch, valid = gk
    grp, src = go
    rp, held, layout, xsrc, size, roff, roff_b = x
    n, sh, ph, sw, dh, dw, wo = window
    kh, lanes, channels = shape[1], shape[3], size[2]
    rows = (rp, layout[0], layout[1])
    channel_window(rp, held, layout, xsrc, n, size, i * sh - ph, kh, dh, roff)
    channels_in(grp, 0, lanes, lanes, 1, 0, src, n * src[1] + i * src[3], wo, channels)
    if pair:
        channel_window(rp, held, layout, xsrc, n, size, (i + 1) * sh - ph, kh, dh, roff_b)
        at = channels * lanes
        channels_in(grp, at, lanes, lanes, 1, 0, src, n * src[1] + (i + 1) * src[3], wo, channels)
        gks = (gp, ga, gb, t_pitch, valid)
        conv = (sw, dw, shift)
        dot_rows2(gks, (grp, 0, at, lanes), rows, (roff, roff_b), shape, conv, offs, dtype)
    else:
        dot_row((gp, ga, t_pitch, valid), (grp, lanes), rows, roff, shape, (sw, dw), offs, dtype)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def forward_blocked(x, kernel, out, sh, sw, ph, pw, dh, dw, bands):  # pragma: no cover
    """out [N, C, Ho, Wo] (any strides) = involution of x [N, C, H, W] (any strides) with the
    C-contiguous kernel [N, G, KH, KW, Ho, Wo]; ``bands`` tasks per image."""
    n_batch, channels, height, width = x.shape
    groups, kh, kw, ho, wo = kernel.shape[1:]
    cpg = channels // groups
    taps, plane = kh * kw, ho * wo
    wp = padded_width(width, wo, sw, pw, kw, dw)
    span = (kh - 1) * dh + 1
    per = (ho + bands - 1) // bands
    src, dst = strided(x), strided(out)
    kp = pointer(kernel)
    for task in prange(n_batch * bands):
        n = task // bands
        i0 = (task % bands) * per
        ring = np.zeros(span * wp * channels, x.dtype)
        held = np.full(span, -1, np.int64)
        tap_k, tap_s = np.empty(taps, np.int64), np.empty(taps, np.int64)
        staged = np.empty(wo * channels if dst[2] != 1 else 0, x.dtype)
        rp, orp = pointer(ring), pointer(staged)
        size, geometry = (height, width, channels), (kh, kw, dh, dw)
        for i in range(i0, min(ho, i0 + per)):
            top = i * sh - ph
            count = pixel_window(
                rp, held, wp * channels, pw, src, n, size, top, geometry, plane, (tap_k, tap_s)
            )
            # the tiles read the kernel where it lies: each tap's values for the row are one
            # contiguous run, read once (a copy into a row buffer first cost as much again)
            base = n * groups * taps * plane + i * wo
            for e in range(count):
                tap_k[e] += base
            at = n * dst[1] + i * dst[3]
            row = (dst[0], at, dst[2], dst[4]) if dst[2] == 1 else (orp, 0, 1, channels)
            kern = (kp, 1, taps * plane)
            aggregate_row(
                row, (rp, sw * channels), kern, (tap_k, tap_s), count, (groups, wo, cpg, 0), x.dtype
            )
            if dst[2] != 1:
                pixels_out(dst, at, orp, 0, channels, wo, channels)
        keep_alive((ring, staged))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def grad_input_blocked(grad_out, kernel, grad_x, sh, sw, ph, pw, dh, dw, bands):  # pragma: no cover
    """grad_x [N, C, H, W] (any strides) from grad_out [N, C, Ho, Wo] (any strides) and the
    C-contiguous kernel: each input pixel gathers kernel * grad_out over the taps (u, v) whose
    output pixel i = (y + ph - u*dh) / sh, j = (x + pw - v*dw) / sw is whole and in range.

    The kernel is read where it lies. The columns whose taps all lie in [0, Wo) run as one
    ``aggregate_row``; the few at the row's ends, where some taps fall outside, one at a time
    with their own taps (``aggregate_pixel``)."""
    n_batch, channels, height, width = grad_x.shape
    groups, kh, kw, ho, wo = kernel.shape[1:]
    cpg = channels // groups
    taps, plane = kh * kw, ho * wo
    jpad, wop = gather_geometry(width, wo, sw, pw, kw, dw)
    span = ((kh - 1) * dh) // sh + 1  # output rows one input row reads
    per = (height + bands - 1) // bands
    src, dst = strided(grad_out), strided(grad_x)
    kp = pointer(kernel)
    conv = (sh, sw, ph, pw, dh, dw)
    geometry, ring = (kh, kw, ho, wo), (span, jpad, wop * channels, channels)
    for task in prange(n_batch * bands):
        n = task // bands
        y0 = (task % bands) * per
        go_ring = np.zeros(span * wop * channels, grad_out.dtype)
        held = np.full(span, -1, np.int64)
        tap_k, tap_s = np.empty(taps, np.int64), np.empty(taps, np.int64)
        tap_j, sub_k, sub_s = (
            np.empty(taps, np.int64),
            np.empty(taps, np.int64),
            np.empty(taps, np.int64),
        )
        staged = np.empty(width * channels if dst[2] != 1 else 0, grad_out.dtype)
        grp, orp = pointer(go_ring), pointer(staged)
        kmap = (n * groups * taps * plane, plane)
        for y in range(y0, min(height, y0 + per)):
            for u in range(kh):  # the output rows this input row reads, into the ring
                num = y + ph - u * dh
                if num < 0 or num % sh != 0 or num // sh >= ho:
                    continue
                i = num // sh
                slot = i % span
                if held[slot] != i:
                    at = (slot * wop + jpad) * channels
                    pixels_in(grp, at, channels, src, n * src[1] + i * src[3], wo, channels)
                    held[slot] = i
            for q in range(min(sw, width)):  # input columns x = q + sw * m
                count = gather_kernel_taps(y, q, conv, geometry, kmap, ring, (tap_k, tap_s, tap_j))
                cols = (width - q + sw - 1) // sw
                lo, hi = 0, cols  # the columns m where every tap's j + m lies in [0, wo)
                for e in range(count):
                    lo = max(lo, -tap_j[e])
                    hi = min(hi, wo - tap_j[e])
                # the pixels' row and their strides: grad_x's own, or a staged pixel row
                if dst[2] == 1:
                    op, row = dst[0], n * dst[1] + y * dst[3] + q * dst[4]
                    os_c, os_m = 1, sw * dst[4]
                else:
                    op, row, os_c, os_m = orp, q * channels, 1, sw * channels
                if hi > lo:
                    for e in range(count):
                        sub_k[e] = tap_k[e] + lo
                        sub_s[e] = tap_s[e] + lo * channels
                    out = (op, row + lo * os_m, os_c, os_m)
                    aggregate_row(
                        out,
                        (grp, channels),
                        (kp, 1, taps * plane),
                        (sub_k, sub_s),
                        count,
                        (groups, hi - lo, cpg, 1),
                        grad_out.dtype,
                    )
                for m in range(cols):
                    if lo <= m < hi:
                        continue
                    valid = 0
                    for e in range(count):
                        if 0 <= tap_j[e] + m < wo:
                            sub_k[valid] = tap_k[e] + m
                            sub_s[valid] = tap_s[e] + m * channels
                            valid += 1
                    out = (op, row + m * os_m, os_c)
                    aggregate_pixel(
                        out,
                        grp,
                        (kp, taps * plane),
                        (sub_k, sub_s),
                        valid,
                        (groups, cpg),
                        grad_out.dtype,
                    )
            if dst[2] != 1:
                pixels_out(dst, n * dst[1] + y * dst[3], orp, 0, channels, width, channels)
        keep_alive((go_ring, staged))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def grad_kernel_blocked(grad_out, x, grad_k, sh, sw, ph, pw, dh, dw, bands):  # pragma: no cover
    """grad_k [N, G, KH, KW, Ho, Wo] (C-contiguous) = the group sums of grad_out [N, C, Ho, Wo]
    times the windows of x [N, C, H, W] (both any strides): ``kernel_gradient_rows`` per pair of
    output rows, from channel rows (split by the phase of the stride) and grad_out's rows as
    [channel][pixel]."""
    n_batch, channels, height, width = x.shape
    groups, kh, kw, ho, wo = grad_k.shape[1:]
    cpg = channels // groups
    taps, plane = kh * kw, ho * wo
    lanes, phase_len = channel_geometry(width, wo, sw, pw, kw, dw)
    pitch = sw * phase_len  # one channel row
    # output rows in pairs (``tiles.dot_rows2``): the x rows of both windows in the ring
    span = (kh - 1) * dh + 1 + sh
    shift = sh // dh if sh % dh == 0 else kh  # row b's tap row u - shift is row a's u
    per = (ho + bands - 1) // bands
    src, xsrc = strided(grad_out), strided(x)
    kp = pointer(grad_k)
    for task in prange(n_batch * bands):
        n = task // bands
        i0 = (task % bands) * per
        i1 = min(ho, i0 + per)
        ring = np.zeros(span * channels * pitch, x.dtype)
        held = np.full(span, -1, np.int64)
        go_rows = np.zeros(2 * channels * lanes, x.dtype)
        roff, roff_b, offs = np.empty(kh, np.int64), np.empty(kh, np.int64), np.empty(4, np.int64)
        rp, grp = pointer(ring), pointer(go_rows)
        size, layout = (height, width, channels), (pitch, phase_len, sw, pw)
        shape = (groups, kh, kw, lanes, cpg)
        xs = (rp, held, layout, xsrc, size, roff, roff_b)
        window = (n, sh, ph, sw, dh, dw, wo)
        for i in range(i0, i1, 2):
            # the tiles store straight into grad_k: each tap's values for the row are one
            # contiguous run (a scratch row copied out afterwards cost a quarter of the kernel)
            base = n * groups * taps * plane + i * wo
            gk = (kp, base, base + wo, plane, wo)
            pair = i + 1 < i1
            kernel_gradient_rows(gk, (grp, src), xs, window, i, pair, shape, shift, offs, x.dtype)
        keep_alive((ring, go_rows))
