"""Rows in and out of the blocked kernels' scratch layouts, whatever the operands' memory layout.

The blocked kernels (``blocked``, ``fused``) compute one output row at a time from a few rows of
their operands held in small per-task buffers (a ring of the rows a window needs), in the layout
each tile wants:

- pixel rows (``pixels_in``): [column][channel], the group's channels contiguous (the LANES-wide
  channel vectors of the aggregation tiles), zero-padded on both sides so that no tap needs a
  bounds test;
- channel rows (``channels_in``): [channel][phase][column / stride], the columns of one phase of
  the stride contiguous (the LANES-wide pixel vectors of the kernel-gradient tiles), zero-padded.

Operands arrive as logical [N, C, H, W] arrays with any strides (a channels_last tensor is an
NHWC array viewed as NCHW), passed around as a ``strided`` view: (pointer, element strides N, C,
H, W). A function copies a LANES-wide run at a time where its source is contiguous in that
direction, and transposes LANES x LANES blocks in registers where it is not (an NCHW row into a
pixel row, an NHWC row into a channel row); a row's last partial block goes through masked
loads and stores (``simd.transpose_part``, ``simd.copy_first``). A row is read once per task,
and the tiles then reuse it KxK times, so the copies cost a small fraction of the
multiply-adds.
"""

from __future__ import annotations

from numba import njit

from involution.kernels.cpu.simd import (
    FASTMATH,
    LANES,
    copy,
    copy_first,
    pointer,
    transpose_block,
    transpose_part,
)


@njit(inline="always")
def strided(a):  # pragma: no cover - compiled
    """A 4-D array as (pointer to its first element, its strides N, C, H, W in elements)."""
    size = a.itemsize
    s = a.strides
    return pointer(a), s[0] // size, s[1] // size, s[2] // size, s[3] // size


@njit(fastmath=FASTMATH, cache=True)
def pixels_in(dst, at, pitch, src, base, width, channels):  # pragma: no cover - compiled
    """dst[at + col * pitch + c] = the source row at ``base`` (``src``: a ``strided`` view) for
    col < width, c < channels: one row as [column][channel]."""
    sp, _, s_c, _, s_w = src
    if s_c == 1:
        blocks = channels // LANES
        for col in range(width):
            d = at + col * pitch
            f = base + col * s_w
            for b in range(blocks):
                copy(dst, d + b * LANES, sp, f + b * LANES)
            for c in range(blocks * LANES, channels):
                dst[d + c] = sp[f + c]
    else:
        # NCHW rows: LANES x LANES blocks transposed in registers, the rest element by element
        cb = channels // LANES * LANES if s_w == 1 else 0
        wb = width // LANES * LANES
        for c0 in range(0, cb, LANES):
            for col0 in range(0, wb, LANES):
                d = at + col0 * pitch + c0
                transpose_block(dst, d, pitch, sp, base + c0 * s_c + col0, s_c)
            if wb < width:
                d = at + wb * pitch + c0
                transpose_part(dst, d, pitch, sp, base + c0 * s_c + wb, s_c, LANES, width - wb)
        for c in range(cb, channels):
            f = base + c * s_c
            for col in range(width):
                dst[at + col * pitch + c] = sp[f + col * s_w]


@njit(fastmath=FASTMATH, cache=True)
def pixels_out(dst, base, src, at, pitch, width, channels):  # pragma: no cover - compiled
    """The inverse of ``pixels_in``: the row at ``base`` of ``dst`` (a ``strided`` view) =
    src[at + col * pitch + c] for col < width, c < channels."""
    dp, _, s_c, _, s_w = dst
    if s_c == 1:
        blocks = channels // LANES
        for col in range(width):
            d = base + col * s_w
            f = at + col * pitch
            for b in range(blocks):
                copy(dp, d + b * LANES, src, f + b * LANES)
            for c in range(blocks * LANES, channels):
                dp[d + c] = src[f + c]
    else:
        cb = channels // LANES * LANES if s_w == 1 else 0
        wb = width // LANES * LANES
        for c0 in range(0, cb, LANES):
            for col0 in range(0, wb, LANES):
                f = at + col0 * pitch + c0
                transpose_block(dp, base + c0 * s_c + col0, s_c, src, f, pitch)
            if wb < width:
                f = at + wb * pitch + c0
                transpose_part(dp, base + c0 * s_c + wb, s_c, src, f, pitch, width - wb, LANES)
        for c in range(cb, channels):
            d = base + c * s_c
            for col in range(width):
                dp[d + col * s_w] = src[at + col * pitch + c]


@njit(fastmath=FASTMATH, cache=True)
def channels_in(
    dst, at, pitch, phase_len, stride, pad, src, base, width, channels
):  # pragma: no cover
    """One source row (``src``: a ``strided`` view, row at ``base``) as channel rows split by the
    phase of the stride: padded column cp = col + pad goes to
    dst[at + c * pitch + (cp % stride) * phase_len + cp // stride]."""
    sp, _, s_c, _, s_w = src
    if stride == 1 and s_w == 1:
        blocks = width // LANES
        for c in range(channels):
            d = at + c * pitch + pad
            f = base + c * s_c
            for b in range(blocks):
                copy(dst, d + b * LANES, sp, f + b * LANES)
            if blocks * LANES < width:
                tail = blocks * LANES
                copy_first(dst, d + tail, sp, f + tail, width - tail)
    else:
        first, done = 0, 0  # columns and channels transposed in blocks
        if stride == 1 and s_c == 1:  # NHWC rows: LANES x LANES blocks transposed in registers
            first = width // LANES * LANES
            done = channels // LANES * LANES
            for col0 in range(0, first, LANES):
                for c0 in range(0, done, LANES):
                    d = at + c0 * pitch + pad + col0
                    transpose_block(dst, d, pitch, sp, base + col0 * s_w + c0, s_w)
                for c in range(done, channels):
                    for col in range(col0, col0 + LANES):
                        dst[at + c * pitch + pad + col] = sp[base + col * s_w + c]
            if first < width:
                for c0 in range(0, done, LANES):
                    d = at + c0 * pitch + pad + first
                    f = base + first * s_w + c0
                    transpose_part(dst, d, pitch, sp, f, s_w, width - first, LANES)
        for col in range(first, width):  # the rest element by element
            cp = col + pad
            f = base + col * s_w
            d = at + (cp % stride) * phase_len + cp // stride
            for c in range(done, channels):
                dst[d + c * pitch] = sp[f + c * s_c]


@njit(cache=True)
def pixel_window(
    ring, held, pitch, pad, src, n, size, top, geometry, k_t, taps
):  # pragma: no cover
    """The taps of one output row whose input rows lie in the image.

    Input rows top + u * dh are held in ``ring`` as zero-padded pixel rows (``pitch`` elements
    each, the image from column ``pad``); a row is loaded once while it stays in the window
    (``held`` says which row each slot holds). Tap (u, v) is listed in ``taps`` = (kernel
    offsets, source offsets) with the kernel offset (u * kw + v) * k_t and the ring offset of its
    first source pixel. ``size`` = (height, width, channels) of the image n of ``src``;
    ``geometry`` = (kh, kw, dh, dw). Returns the number of taps listed."""
    height, width, channels = size
    kh, kw, dh, dw = geometry
    tap_k, tap_s = taps
    span = held.shape[0]
    count = 0
    for u in range(kh):
        y = top + u * dh
        if y < 0 or y >= height:
            continue
        slot = y % span
        if held[slot] != y:
            base = n * src[1] + y * src[3]
            pixels_in(ring, slot * pitch + pad * channels, channels, src, base, width, channels)
            held[slot] = y
        for v in range(kw):
            tap_k[count] = (u * kw + v) * k_t
            tap_s[count] = slot * pitch + v * dw * channels
            count += 1
    return count


@njit(cache=True)
def channel_window(ring, held, layout, src, n, size, top, kh, dh, roff):  # pragma: no cover
    """Like ``pixel_window`` for channel rows (``channels_in``; ``layout`` = (pitch, phase_len,
    stride, pad), a row taking channels * pitch elements): roff[u] is the ring offset of input
    row top + u * dh, -1 outside the image."""
    height, width, channels = size
    pitch, phase_len, stride, pad = layout
    span = held.shape[0]
    for u in range(kh):
        y = top + u * dh
        if y < 0 or y >= height:
            roff[u] = -1
            continue
        at = (y % span) * channels * pitch
        if held[y % span] != y:
            base = n * src[1] + y * src[3]
            channels_in(ring, at, pitch, phase_len, stride, pad, src, base, width, channels)
            held[y % span] = y
        roff[u] = at


@njit(cache=True)
def gather_taps(y, q, conv, kh, kw, rows_out, ring, taps):  # pragma: no cover - compiled
    """The taps of grad_x's input row y, columns q + sw * m (one phase of the stride), as a
    gather: tap (u, v) reads output row i = (y + ph - u * dh) / sh and column
    j = (q + pw - v * dw) / sw + m where those are whole and i is in [0, rows_out).

    ``conv`` = (sh, sw, ph, pw, dh, dw). The output rows sit in rings of their own
    (``ring`` = (span, jpad, k_slot, k_t, k_j, pitch, channels)): the kernel value of tap (u, v)
    at slot * k_slot + (u * kw + v) * k_t + (j + jpad) * k_j, the grad_out pixel at
    slot * pitch + (j + jpad) * channels. Lists (kernel offset, pixel offset) for m = 0 in
    ``taps``; returns their number."""
    sh, sw, ph, pw, dh, dw = conv
    span, jpad, k_slot, k_t, k_j, pitch, channels = ring
    tap_k, tap_s = taps
    count = 0
    for u in range(kh):
        num = y + ph - u * dh
        if num < 0 or num % sh != 0 or num // sh >= rows_out:
            continue
        slot = (num // sh) % span
        for v in range(kw):
            col = q + pw - v * dw
            if col % sw != 0:
                continue
            j = col // sw + jpad
            tap_k[count] = slot * k_slot + (u * kw + v) * k_t + j * k_j
            tap_s[count] = slot * pitch + j * channels
            count += 1
    return count


@njit(cache=True)
def gather_kernel_taps(y, q, conv, geometry, kmap, ring, taps):  # pragma: no cover - compiled
    """``gather_taps`` with the kernel read where it lies ([G, KH, KW, Ho, Wo] from ``kbase``)
    instead of from a ring of zero-padded copies: lists, for m = 0, the kernel offset
    kbase + (u * kw + v) * plane + i * wo + j, the grad_out pixel's ring offset and j itself
    (tap_j), so that the caller can tell for which columns m a tap's j + m lies in [0, wo).

    ``geometry`` = (kh, kw, rows_out, wo); ``kmap`` = (kbase, plane); ``ring`` = (span, jpad,
    pitch, channels) of the grad_out rows; ``taps`` = (tap_k, tap_s, tap_j)."""
    sh, sw, ph, pw, dh, dw = conv
    kh, kw, rows_out, wo = geometry
    kbase, plane = kmap
    span, jpad, pitch, channels = ring
    tap_k, tap_s, tap_j = taps
    count = 0
    for u in range(kh):
        num = y + ph - u * dh
        if num < 0 or num % sh != 0 or num // sh >= rows_out:
            continue
        i = num // sh
        slot = i % span
        for v in range(kw):
            col = q + pw - v * dw
            if col % sw != 0:
                continue
            j = col // sw
            tap_k[count] = kbase + (u * kw + v) * plane + i * wo + j
            tap_s[count] = slot * pitch + (j + jpad) * channels
            tap_j[count] = j
            count += 1
    return count
