"""The register tiles of the blocked kernels: one output row of each of the op's three products.

Each function computes one row from rows already laid out by ``rows`` (see there), with its
accumulators in a stack tile (``simd.stack_array``) that LLVM keeps in vector registers:

- ``aggregate_row``: out[j, c] = sum over a list of taps of kernel[tap, j] * src[tap, j, c]:
  tiles of 4 pixels x LANES channels (the forward; grad_input as a gather per input pixel);
- ``dot_row``: gk[t, j] = sum over a group's channels of go[c, j] * x[c, j*step + v*dil]: tiles
  of LANES pixels x up to 4 taps (the kernel gradient, the windowed dot product);
- ``matmul_rows``: c[j, o] (+)= sum_r a[j, r] * b[r, o]: tiles of 4 rows x 2*LANES columns, the
  kernel generation and the gradients of the fused op's matrix products.

The sums run in a fixed order per result (taps in (u, v) order, channels in order, the inner
dimension of a product in order), one fused multiply-add each, so ``generic`` (plain loops in
that order) gives the same bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from involution.kernels.cpu.simd import (
    FASTMATH,
    LANES,
    copy,
    fma,
    fma4,
    fma_vv,
    stack_array,
    store_first,
    zero,
)

TILE = 4 * LANES  # 4 pixels x LANES channels, 4 taps x LANES pixels
WIDE = 8 * LANES  # 4 rows x 2*LANES columns
ROW7 = 14 * LANES  # 7 taps x 2 rows of LANES pixels


@njit(inline="always", fastmath=FASTMATH)
def _store_pixels(dst, at, s_c, s_w, acc, count):  # pragma: no cover - compiled
    """``count`` pixels of LANES channels from the tile to dst[at + q * s_w + lane * s_c]."""
    if s_c == 1:
        for q in range(count):
            copy(dst, at + q * s_w, acc, q * LANES)
    else:
        for q in range(count):
            for lane in range(LANES):
                dst[at + q * s_w + lane * s_c] = acc[q * LANES + lane]


@njit(fastmath=FASTMATH, cache=True)
def aggregate_row(out, src, kern, taps, count, shape, dtype):  # pragma: no cover - compiled
    """One row of out[c, j] = sum over the taps e < ``count``, in order, of
    kern[tap_k[e] + g * k_g + j * k_j] * src[tap_s[e] + c + j * s_j], for j < width and every
    channel c (g = c // cpg).

    ``out`` = (pointer, offset of the row, stride of a channel, stride of a pixel); ``src`` =
    (pointer, stride of a pixel) to pixel rows ([column][channel], so channel c adds c);
    ``kern`` = (pointer, stride of a pixel, stride of a group); ``taps`` = (tap_k, tap_s), the
    offsets of each tap's kernel value and source pixel for j = 0 and group 0; ``shape`` =
    (groups, width, cpg, blocks_last: see below). The forward lists the taps (u, v) of the rows
    inside the image, grad_input (a gather) those whose output pixel exists, for one phase of
    the stride.

    Tiles of 4 pixels x LANES channels: four independent FMA chains per tap, one store per pixel
    and channel block; the row's last 1-3 pixels in one tile of as many chains."""
    op, obase, os_c, os_j = out
    sp, s_j = src
    kp, k_j, k_g = kern
    tap_k, tap_s = taps
    groups, width, cpg, blocks_last = shape
    acc = stack_array(TILE, dtype)
    full = width // 4
    blocks = groups * cpg // LANES
    # ``blocks_last``: the row's last 1-3 pixels one at a time in tiles of 4 channel blocks (4
    # chains; ``aggregate_pixel``'s tile) after the groups' loop, where there are 4k blocks. For
    # grad_input's gather, whose rows between the edge pixels can be 1-3 wide (7x7 maps: 1), it
    # was 1.04-1.09x faster; the forward, whose rows end in the tiles below within each group
    # while the group's kernel values are in cache, was 0.8x as fast at 7x7 that way.
    across = blocks_last and full * 4 < width and blocks % 4 == 0
    for g in range(groups):
        kg = g * k_g
        for cb in range(cpg // LANES):
            c0 = g * cpg + cb * LANES
            for jb in range(full):
                j = jb * 4
                zero(acc, 0)
                zero(acc, LANES)
                zero(acc, 2 * LANES)
                zero(acc, 3 * LANES)
                for e in range(count):
                    fma4(acc, kp, tap_k[e] + kg + j * k_j, k_j, sp, tap_s[e] + c0 + j * s_j, s_j)
                _store_pixels(op, obase + c0 * os_c + j * os_j, os_c, os_j, acc, 4)
            j = full * 4
            rest = 0 if across else width - j
            # the last 1-3 pixels of the row as one tile with a chain each: one pixel at a time,
            # a chain of ``count`` dependent FMAs (49 at K = 7) waits on the FMA latency, and at
            # widths 7 and 14 those pixels took about as long as the rest of the row
            if rest == 3:
                zero(acc, 0)
                zero(acc, LANES)
                zero(acc, 2 * LANES)
                for e in range(count):
                    kat = tap_k[e] + kg + j * k_j
                    frm = tap_s[e] + c0 + j * s_j
                    fma(acc, 0, kp[kat], sp, frm)
                    fma(acc, LANES, kp[kat + k_j], sp, frm + s_j)
                    fma(acc, 2 * LANES, kp[kat + 2 * k_j], sp, frm + 2 * s_j)
                _store_pixels(op, obase + c0 * os_c + j * os_j, os_c, os_j, acc, 3)
            elif rest == 2:
                zero(acc, 0)
                zero(acc, LANES)
                for e in range(count):
                    kat = tap_k[e] + kg + j * k_j
                    frm = tap_s[e] + c0 + j * s_j
                    fma(acc, 0, kp[kat], sp, frm)
                    fma(acc, LANES, kp[kat + k_j], sp, frm + s_j)
                _store_pixels(op, obase + c0 * os_c + j * os_j, os_c, os_j, acc, 2)
            elif rest == 1:
                zero(acc, 0)
                for e in range(count):
                    fma(acc, 0, kp[tap_k[e] + kg + j * k_j], sp, tap_s[e] + c0 + j * s_j)
                _store_pixels(op, obase + c0 * os_c + j * os_j, os_c, os_j, acc, 1)
    if across:
        for j in range(full * 4, width):
            for b0 in range(0, blocks, 4):
                g0 = (b0 * LANES // cpg) * k_g + j * k_j
                g1 = ((b0 + 1) * LANES // cpg) * k_g + j * k_j
                g2 = ((b0 + 2) * LANES // cpg) * k_g + j * k_j
                g3 = ((b0 + 3) * LANES // cpg) * k_g + j * k_j
                zero(acc, 0)
                zero(acc, LANES)
                zero(acc, 2 * LANES)
                zero(acc, 3 * LANES)
                for e in range(count):
                    k = tap_k[e]
                    frm = tap_s[e] + b0 * LANES + j * s_j
                    fma(acc, 0, kp[k + g0], sp, frm)
                    fma(acc, LANES, kp[k + g1], sp, frm + LANES)
                    fma(acc, 2 * LANES, kp[k + g2], sp, frm + 2 * LANES)
                    fma(acc, 3 * LANES, kp[k + g3], sp, frm + 3 * LANES)
                at = obase + b0 * LANES * os_c + j * os_j
                _store_pixels(op, at, os_c, LANES * os_c, acc, 4)


@njit(fastmath=FASTMATH, cache=True)
def aggregate_pixel(out, src, kern, taps, count, shape, dtype):  # pragma: no cover - compiled
    """One pixel of ``aggregate_row`` for every channel c: out[c] = sum over the taps e <
    ``count``, in order, of kern[tap_k[e] + g * k_g] * src[tap_s[e] + c] (g = c // cpg).

    ``out`` = (pointer, offset of the pixel, stride of a channel); ``src`` = a pointer to pixel
    rows ([column][channel]); ``kern`` = (pointer, stride of a group); ``taps`` = (tap_k, tap_s)
    for this pixel; ``shape`` = (groups, cpg). For the pixels whose taps differ from their
    row's (grad_input's gather at the image's left and right edges): tiles of 4 channel blocks,
    four independent FMA chains per tap where one pixel alone would wait on one chain."""
    op, oat, os_c = out
    sp = src
    kp, k_g = kern
    tap_k, tap_s = taps
    groups, cpg = shape
    acc = stack_array(TILE, dtype)
    blocks = groups * cpg // LANES
    per_group = cpg // LANES
    full = blocks // 4
    for bb in range(full + blocks % 4):
        if bb < full:
            b0, width = bb * 4, 4
        else:
            b0, width = full * 4 + (bb - full), 1
        if width == 4:
            g0 = (b0 // per_group) * k_g
            g1 = ((b0 + 1) // per_group) * k_g
            g2 = ((b0 + 2) // per_group) * k_g
            g3 = ((b0 + 3) // per_group) * k_g
            c0 = b0 * LANES
            zero(acc, 0)
            zero(acc, LANES)
            zero(acc, 2 * LANES)
            zero(acc, 3 * LANES)
            for e in range(count):
                k = tap_k[e]
                s = tap_s[e] + c0
                fma(acc, 0, kp[k + g0], sp, s)
                fma(acc, LANES, kp[k + g1], sp, s + LANES)
                fma(acc, 2 * LANES, kp[k + g2], sp, s + 2 * LANES)
                fma(acc, 3 * LANES, kp[k + g3], sp, s + 3 * LANES)
            _store_pixels(op, oat + c0 * os_c, os_c, LANES * os_c, acc, 4)
        else:
            g0 = (b0 // per_group) * k_g
            c0 = b0 * LANES
            zero(acc, 0)
            for e in range(count):
                fma(acc, 0, kp[tap_k[e] + g0], sp, tap_s[e] + c0)
            _store_pixels(op, oat + c0 * os_c, os_c, LANES * os_c, acc, 1)


@njit(inline="always", fastmath=FASTMATH)
def _store_run(dst, at, acc, frm, valid):  # pragma: no cover - compiled
    """dst[at : at + min(valid, LANES)] = acc[frm : ...]: a whole vector, or the row's tail."""
    if valid >= LANES:
        copy(dst, at, acc, frm)
    else:
        store_first(dst, at, acc, frm, valid)


@njit(fastmath=FASTMATH, cache=True)
def _dot_tile(gk, go, xp, xat, c_pitch, offs, count, cpg, dtype):  # pragma: no cover - compiled
    """gk rows t = 0..count-1 (gk = (pointer, offset, stride of a row, pixels to store: a tail
    of fewer than LANES is stored element by element)) = sum over cpg channels
    c, in order, of go[offset + c * stride] (go = (pointer, offset, stride of a channel)) *
    x[xat + c * c_pitch + offs[t]]: one go vector feeds ``count`` (1 to 4) FMA chains. Each count
    has its own branch so that every tile index is a constant."""
    gp, gat, t_pitch, valid = gk
    op, oat, go_pitch = go
    acc = stack_array(TILE, dtype)
    if count == 4:
        o0, o1, o2, o3 = offs[0], offs[1], offs[2], offs[3]
        zero(acc, 0)
        zero(acc, LANES)
        zero(acc, 2 * LANES)
        zero(acc, 3 * LANES)
        for cc in range(cpg):
            g = oat + cc * go_pitch
            x = xat + cc * c_pitch
            fma_vv(acc, 0, op, g, xp, x + o0)
            fma_vv(acc, LANES, op, g, xp, x + o1)
            fma_vv(acc, 2 * LANES, op, g, xp, x + o2)
            fma_vv(acc, 3 * LANES, op, g, xp, x + o3)
        _store_run(gp, gat, acc, 0, valid)
        _store_run(gp, gat + t_pitch, acc, LANES, valid)
        _store_run(gp, gat + 2 * t_pitch, acc, 2 * LANES, valid)
        _store_run(gp, gat + 3 * t_pitch, acc, 3 * LANES, valid)
    elif count == 3:
        o0, o1, o2 = offs[0], offs[1], offs[2]
        zero(acc, 0)
        zero(acc, LANES)
        zero(acc, 2 * LANES)
        for cc in range(cpg):
            g = oat + cc * go_pitch
            x = xat + cc * c_pitch
            fma_vv(acc, 0, op, g, xp, x + o0)
            fma_vv(acc, LANES, op, g, xp, x + o1)
            fma_vv(acc, 2 * LANES, op, g, xp, x + o2)
        _store_run(gp, gat, acc, 0, valid)
        _store_run(gp, gat + t_pitch, acc, LANES, valid)
        _store_run(gp, gat + 2 * t_pitch, acc, 2 * LANES, valid)
    elif count == 2:
        o0, o1 = offs[0], offs[1]
        zero(acc, 0)
        zero(acc, LANES)
        for cc in range(cpg):
            g = oat + cc * go_pitch
            x = xat + cc * c_pitch
            fma_vv(acc, 0, op, g, xp, x + o0)
            fma_vv(acc, LANES, op, g, xp, x + o1)
        _store_run(gp, gat, acc, 0, valid)
        _store_run(gp, gat + t_pitch, acc, LANES, valid)
    else:
        o0 = offs[0]
        zero(acc, 0)
        for cc in range(cpg):
            fma_vv(acc, 0, op, oat + cc * go_pitch, xp, xat + cc * c_pitch + o0)
        _store_run(gp, gat, acc, 0, valid)


@njit(fastmath=FASTMATH, cache=True)
def _dot_tile2(gka, gkb, go, xp, xat, c_pitch, offs, count, cpg, dtype):  # pragma: no cover
    """``_dot_tile`` for two output rows a and b at once whose taps read the same channel rows of
    x (row b's tap row u - shift is row a's tap row u): each x vector feeds an FMA chain of
    each row, 2 x ``count`` chains, and a load of x per two multiply-adds where one row alone
    has a load per one. ``gka``, ``gkb`` = (pointer, offset, stride of a tap row, pixels to
    store); ``go`` = (pointer, offset of row a, offset of row b, stride of a channel)."""
    gp, ga, t_pitch, valid = gka
    gb = gkb[1]
    op, oa, ob, go_pitch = go
    acc = stack_array(WIDE, dtype)
    if count != 3:  # 4 taps, or 1-2 (kernels 1, 2, 5 or 6 wide) repeating the last one
        o0 = offs[0]
        o1 = offs[1] if count > 1 else o0
        o2 = offs[2] if count > 2 else o1
        o3 = offs[3] if count > 3 else o2
        for q in range(8):
            zero(acc, q * LANES)
        for cc in range(cpg):
            a = oa + cc * go_pitch
            b = ob + cc * go_pitch
            x = xat + cc * c_pitch
            fma_vv(acc, 0, op, a, xp, x + o0)
            fma_vv(acc, LANES, op, b, xp, x + o0)
            fma_vv(acc, 2 * LANES, op, a, xp, x + o1)
            fma_vv(acc, 3 * LANES, op, b, xp, x + o1)
            fma_vv(acc, 4 * LANES, op, a, xp, x + o2)
            fma_vv(acc, 5 * LANES, op, b, xp, x + o2)
            fma_vv(acc, 6 * LANES, op, a, xp, x + o3)
            fma_vv(acc, 7 * LANES, op, b, xp, x + o3)
    else:
        o0, o1, o2 = offs[0], offs[1], offs[2]
        for q in range(6):
            zero(acc, q * LANES)
        for cc in range(cpg):
            a = oa + cc * go_pitch
            b = ob + cc * go_pitch
            x = xat + cc * c_pitch
            fma_vv(acc, 0, op, a, xp, x + o0)
            fma_vv(acc, LANES, op, b, xp, x + o0)
            fma_vv(acc, 2 * LANES, op, a, xp, x + o1)
            fma_vv(acc, 3 * LANES, op, b, xp, x + o1)
            fma_vv(acc, 4 * LANES, op, a, xp, x + o2)
            fma_vv(acc, 5 * LANES, op, b, xp, x + o2)
    for q in range(4):
        if q < count:
            _store_run(gp, ga + q * t_pitch, acc, 2 * q * LANES, valid)
            _store_run(gp, gb + q * t_pitch, acc, (2 * q + 1) * LANES, valid)


@njit(fastmath=FASTMATH, cache=True)
def _dot_tile2_7(gka, gkb, go, xp, xat, c_pitch, offs, cpg, dtype):  # pragma: no cover
    """``_dot_tile2`` for a whole kernel row of 7 taps (RedNet's K = 7) in one tile: 14 FMA
    chains, 2 grad_out loads and 7 x loads per channel, where two tiles of 4 and 3 taps need
    2 x 2 grad_out loads, pay twice the call and keep 8 chains at most. Written out tap by tap:
    as a loop over the taps LLVM kept the 14 accumulators in memory (12x slower)."""
    gp, ga, t_pitch, valid = gka
    gb = gkb[1]
    op, oa, ob, go_pitch = go
    acc = stack_array(ROW7, dtype)
    o0, o1, o2, o3, o4, o5, o6 = offs[0], offs[1], offs[2], offs[3], offs[4], offs[5], offs[6]
    for q in range(14):
        zero(acc, q * LANES)
    for cc in range(cpg):
        a = oa + cc * go_pitch
        b = ob + cc * go_pitch
        x = xat + cc * c_pitch
        fma_vv(acc, 0, op, a, xp, x + o0)
        fma_vv(acc, LANES, op, b, xp, x + o0)
        fma_vv(acc, 2 * LANES, op, a, xp, x + o1)
        fma_vv(acc, 3 * LANES, op, b, xp, x + o1)
        fma_vv(acc, 4 * LANES, op, a, xp, x + o2)
        fma_vv(acc, 5 * LANES, op, b, xp, x + o2)
        fma_vv(acc, 6 * LANES, op, a, xp, x + o3)
        fma_vv(acc, 7 * LANES, op, b, xp, x + o3)
        fma_vv(acc, 8 * LANES, op, a, xp, x + o4)
        fma_vv(acc, 9 * LANES, op, b, xp, x + o4)
        fma_vv(acc, 10 * LANES, op, a, xp, x + o5)
        fma_vv(acc, 11 * LANES, op, b, xp, x + o5)
        fma_vv(acc, 12 * LANES, op, a, xp, x + o6)
        fma_vv(acc, 13 * LANES, op, b, xp, x + o6)
    for q in range(7):
        _store_run(gp, ga + q * t_pitch, acc, 2 * q * LANES, valid)
        _store_run(gp, gb + q * t_pitch, acc, (2 * q + 1) * LANES, valid)


@njit(fastmath=FASTMATH, cache=True)
def dot_row(gk, go, src, roff, shape, conv, offs, dtype):  # pragma: no cover - compiled
    """One row of the kernel gradient: gk[t, j] = sum over the channels c of group g, in order,
    of go[c, j] * x[c, j * step + v * dil], for t = (g * kh + u) * kw + v and j < ``lanes`` (a
    multiple of LANES); a tap row u with roff[u] < 0 (outside the image) gives zeros.

    ``gk`` = (pointer, offset, stride of a tap row, pixels stored per tap row: ``lanes`` into a
    padded scratch row, or the row's width straight into the kernel-gradient tensor); ``go`` =
    (pointer, stride of a channel) to one row of the incoming gradient as [channel][pixel];
    ``src`` = (pointer, stride of a channel, length of a phase) to channel rows split by phase
    (``rows.channels_in``), tap row u at roff[u]; ``shape`` = (groups, kh, kw, lanes, cpg);
    ``conv`` = (step, dil) along the row; ``offs``: a scratch int64 array of 4."""
    gp, gbase, t_pitch, valid = gk
    op, go_pitch = go
    sp, c_pitch, phase_len = src
    groups, kh, kw, lanes, cpg = shape
    step, dil = conv
    for g in range(groups):
        for u in range(kh):
            r = roff[u]
            t0 = (g * kh + u) * kw
            if r < 0:
                for v in range(kw):
                    at = gbase + (t0 + v) * t_pitch
                    for j in range(valid):
                        gp[at + j] = 0
                continue
            for jv in range(lanes // LANES):
                j = jv * LANES
                v = 0
                while v < kw:
                    count = min(4, kw - v)
                    for q in range(count):
                        tap = (v + q) * dil
                        offs[q] = (tap % step) * phase_len + tap // step + j
                    rows = (gp, gbase + (t0 + v) * t_pitch + j, t_pitch, valid - j)
                    channels = (op, g * cpg * go_pitch + j, go_pitch)
                    xat = r + g * cpg * c_pitch
                    _dot_tile(rows, channels, sp, xat, c_pitch, offs, count, cpg, dtype)
                    v += count


@njit(fastmath=FASTMATH, cache=True)
def dot_rows2(gk, go, src, roffs, shape, conv, offs, dtype):  # pragma: no cover - compiled
    """``dot_row`` for two output rows a and b at once (``gk`` = (pointer, offset of row a,
    offset of row b, stride of a tap row, pixels stored); ``go`` = (pointer, offset of row a,
    offset of row b, stride of a channel); ``roffs`` = (roff of row a, roff of row b)): where
    row b's tap row u - shift reads the same x row as row a's tap row u (``conv`` = (step, dil,
    shift); shift = sh / dh, or kh where no row is shared), one tile computes both
    (``_dot_tile2``). Same sums, in the same order, as ``dot_row`` on each row."""
    gp, ga, gb, t_pitch, valid = gk
    op, oa, ob, go_pitch = go
    roffa, roffb = roffs
    sp, c_pitch, phase_len = src
    groups, kh, kw, lanes, cpg = shape
    step, dil, shift = conv
    tapoff = np.empty(max(kw, 1), np.int64)  # each tap's column offset, for all tiles
    for v in range(kw):
        tap = v * dil
        tapoff[v] = (tap % step) * phase_len + tap // step
    offs7 = np.empty(7, np.int64)
    for g in range(groups):
        for u in range(kh):  # tap rows outside the image: zeros
            for row, roff in ((ga, roffa), (gb, roffb)):
                if roff[u] < 0:
                    for v in range(kw):
                        at = row + ((g * kh + u) * kw + v) * t_pitch
                        for j in range(valid):
                            gp[at + j] = 0
        for up in range(kh + shift):
            ub = up - shift
            a_in = up < kh and roffa[up] >= 0
            b_in = 0 <= ub < kh and roffb[ub] >= 0
            if not (a_in or b_in):
                continue
            r = roffa[up] if a_in else roffb[ub]
            ta = (g * kh + up) * kw
            tb = (g * kh + ub) * kw
            xat = r + g * cpg * c_pitch
            for jv in range(lanes // LANES):
                j = jv * LANES
                v = 0
                if kw == 7 and a_in and b_in:
                    for q in range(7):
                        offs7[q] = tapoff[q] + j
                    rows_a = (gp, ga + ta * t_pitch + j, t_pitch, valid - j)
                    rows_b = (gp, gb + tb * t_pitch + j, t_pitch, valid - j)
                    ca, cb = oa + g * cpg * go_pitch + j, ob + g * cpg * go_pitch + j
                    channels = (op, ca, cb, go_pitch)
                    _dot_tile2_7(rows_a, rows_b, channels, sp, xat, c_pitch, offs7, cpg, dtype)
                    v = kw
                while v < kw:
                    count = min(4, kw - v)
                    for q in range(count):
                        offs[q] = tapoff[v + q] + j
                    rows_a = (gp, ga + (ta + v) * t_pitch + j, t_pitch, valid - j)
                    rows_b = (gp, gb + (tb + v) * t_pitch + j, t_pitch, valid - j)
                    ca, cb = oa + g * cpg * go_pitch + j, ob + g * cpg * go_pitch + j
                    if a_in and b_in:
                        channels = (op, ca, cb, go_pitch)
                        _dot_tile2(
                            rows_a, rows_b, channels, sp, xat, c_pitch, offs, count, cpg, dtype
                        )
                    else:
                        rows = rows_a if a_in else rows_b
                        channels = (op, ca if a_in else cb, go_pitch)
                        _dot_tile(rows, channels, sp, xat, c_pitch, offs, count, cpg, dtype)
                    v += count


@njit(fastmath=FASTMATH, cache=True)
def matmul_rows(c, a, b, dims, init, bias, dtype):  # pragma: no cover - compiled
    """c[j, o] = start + sum_r a[j, r] * b[r, o] for j < rows, o < cols (a multiple of LANES), r
    in order, with ``dims`` = (rows, inner, cols); the start value is 0 (``init`` 0), the value
    already there (1: accumulate) or bias[o] (2).

    ``c`` = (pointer, offset, stride of a row); ``a`` = (pointer, offset, stride of a row j,
    stride of r); ``b`` = (pointer, offset, stride of a row r); ``bias`` = (pointer, offset).
    Tiles of 4 rows x 2 LANES-vectors (8 FMA chains per inner step: 2 vector loads of b, 4
    broadcasts of a), the last 1-3 rows in one tile of as many rows x 2 vectors (a row of 7 or
    14 pixels, the fused kernels' 7x7 and 14x14 maps, ended on a single chain per vector); an
    odd last column vector (all of a LANES-wide product) in tiles of 8 rows x 1 vector, its rows
    left over in a 1-row x 1-vector tile."""
    cp, cat, c_pitch = c
    ap, aat, a_pitch, a_inner = a
    bp, bat, b_pitch = b
    zp, bias_at = bias
    rows, inner, cols = dims
    wide = stack_array(WIDE, dtype)
    one = stack_array(LANES, dtype)
    full = rows // 4
    pairs = cols // (2 * LANES)
    for ob in range(pairs):
        o = ob * 2 * LANES
        for jb in range(full):
            j0 = jb * 4
            for q in range(4):
                for h in range(2):
                    at = q * 2 * LANES + h * LANES
                    dst = cat + (j0 + q) * c_pitch + o + h * LANES
                    if init == 0:
                        zero(wide, at)
                    elif init == 1:
                        copy(wide, at, cp, dst)
                    else:
                        copy(wide, at, zp, bias_at + o + h * LANES)
            for r in range(inner):
                brow = bat + r * b_pitch + o
                ar = aat + j0 * a_pitch + r * a_inner
                a0 = ap[ar]
                a1 = ap[ar + a_pitch]
                a2 = ap[ar + 2 * a_pitch]
                a3 = ap[ar + 3 * a_pitch]
                fma(wide, 0, a0, bp, brow)
                fma(wide, LANES, a0, bp, brow + LANES)
                fma(wide, 2 * LANES, a1, bp, brow)
                fma(wide, 3 * LANES, a1, bp, brow + LANES)
                fma(wide, 4 * LANES, a2, bp, brow)
                fma(wide, 5 * LANES, a2, bp, brow + LANES)
                fma(wide, 6 * LANES, a3, bp, brow)
                fma(wide, 7 * LANES, a3, bp, brow + LANES)
            for q in range(4):
                for h in range(2):
                    dst = cat + (j0 + q) * c_pitch + o + h * LANES
                    copy(cp, dst, wide, q * 2 * LANES + h * LANES)
    if cols % (2 * LANES):  # the last column vector: tiles of 8 rows x 1 vector
        o = pairs * 2 * LANES
        for jb in range(rows // 8):
            j0 = jb * 8
            for q in range(8):
                dst = cat + (j0 + q) * c_pitch + o
                if init == 0:
                    zero(wide, q * LANES)
                elif init == 1:
                    copy(wide, q * LANES, cp, dst)
                else:
                    copy(wide, q * LANES, zp, bias_at + o)
            for r in range(inner):
                brow = bat + r * b_pitch + o
                ar = aat + j0 * a_pitch + r * a_inner
                fma(wide, 0, ap[ar], bp, brow)
                fma(wide, LANES, ap[ar + a_pitch], bp, brow)
                fma(wide, 2 * LANES, ap[ar + 2 * a_pitch], bp, brow)
                fma(wide, 3 * LANES, ap[ar + 3 * a_pitch], bp, brow)
                fma(wide, 4 * LANES, ap[ar + 4 * a_pitch], bp, brow)
                fma(wide, 5 * LANES, ap[ar + 5 * a_pitch], bp, brow)
                fma(wide, 6 * LANES, ap[ar + 6 * a_pitch], bp, brow)
                fma(wide, 7 * LANES, ap[ar + 7 * a_pitch], bp, brow)
            for q in range(8):
                copy(cp, cat + (j0 + q) * c_pitch + o, wide, q * LANES)
    rest = rows - full * 4
    if rest > 0:  # the last 1-3 rows, 2 vectors at a time: 2-6 chains instead of one
        j0 = full * 4
        for ob in range(pairs):
            o = ob * 2 * LANES
            for q in range(rest):
                for h in range(2):
                    dst = cat + (j0 + q) * c_pitch + o + h * LANES
                    at = q * 2 * LANES + h * LANES
                    if init == 0:
                        zero(wide, at)
                    elif init == 1:
                        copy(wide, at, cp, dst)
                    else:
                        copy(wide, at, zp, bias_at + o + h * LANES)
            if rest == 3:
                for r in range(inner):
                    brow = bat + r * b_pitch + o
                    ar = aat + j0 * a_pitch + r * a_inner
                    a0 = ap[ar]
                    a1 = ap[ar + a_pitch]
                    a2 = ap[ar + 2 * a_pitch]
                    fma(wide, 0, a0, bp, brow)
                    fma(wide, LANES, a0, bp, brow + LANES)
                    fma(wide, 2 * LANES, a1, bp, brow)
                    fma(wide, 3 * LANES, a1, bp, brow + LANES)
                    fma(wide, 4 * LANES, a2, bp, brow)
                    fma(wide, 5 * LANES, a2, bp, brow + LANES)
            elif rest == 2:
                for r in range(inner):
                    brow = bat + r * b_pitch + o
                    ar = aat + j0 * a_pitch + r * a_inner
                    a0 = ap[ar]
                    a1 = ap[ar + a_pitch]
                    fma(wide, 0, a0, bp, brow)
                    fma(wide, LANES, a0, bp, brow + LANES)
                    fma(wide, 2 * LANES, a1, bp, brow)
                    fma(wide, 3 * LANES, a1, bp, brow + LANES)
            else:
                for r in range(inner):
                    brow = bat + r * b_pitch + o
                    a0 = ap[aat + j0 * a_pitch + r * a_inner]
                    fma(wide, 0, a0, bp, brow)
                    fma(wide, LANES, a0, bp, brow + LANES)
            for q in range(rest):
                for h in range(2):
                    dst = cat + (j0 + q) * c_pitch + o + h * LANES
                    copy(cp, dst, wide, q * 2 * LANES + h * LANES)
    for ov in range(pairs * 2, cols // LANES):  # the odd last vector's rows left over
        o = ov * LANES
        first = rows // 8 * 8
        for j in range(first, rows):
            dst = cat + j * c_pitch + o
            if init == 0:
                zero(one, 0)
            elif init == 1:
                copy(one, 0, cp, dst)
            else:
                copy(one, 0, zp, bias_at + o)
            for r in range(inner):
                fma(one, 0, ap[aat + j * a_pitch + r * a_inner], bp, bat + r * b_pitch + o)
            copy(cp, dst, one, 0)
