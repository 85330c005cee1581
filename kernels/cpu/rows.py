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
NHWC array viewed as NCHW): each function takes pointers (``simd.pointer``) and the element
strides, and copies a LANES-wide run at a time where the source is contiguous in that direction,
element by element where it is not (an NCHW row into a pixel row, an NHWC row into a channel
row: the transposes). A row is read
once per task, and the tiles then reuse it KxK times, so the transposes cost a small fraction of
the multiply-adds.
"""

from __future__ import annotations

from numba import njit

from involution.kernels.cpu.simd import FASTMATH, LANES, copy


@njit(inline="always")
def element_strides(a):  # pragma: no cover - compiled
    """The strides of a 4-D array in elements."""
    size = a.itemsize
    return a.strides[0] // size, a.strides[1] // size, a.strides[2] // size, a.strides[3] // size


@njit(fastmath=FASTMATH, cache=True)
def pixels_in(dst, at, pitch, src, base, s_c, s_w, width, channels):  # pragma: no cover
    """dst[at + col * pitch + c] = src[base + c * s_c + col * s_w] for col < width,
    c < channels: one row of the source as [column][channel]."""
    if s_c == 1:
        blocks = channels // LANES
        for col in range(width):
            d = at + col * pitch
            f = base + col * s_w
            for b in range(blocks):
                copy(dst, d + b * LANES, src, f + b * LANES)
            for c in range(blocks * LANES, channels):
                dst[d + c] = src[f + c]
    else:
        for c in range(channels):
            f = base + c * s_c
            for col in range(width):
                dst[at + col * pitch + c] = src[f + col * s_w]


@njit(fastmath=FASTMATH, cache=True)
def pixels_out(dst, base, s_c, s_w, src, at, pitch, width, channels):  # pragma: no cover
    """The inverse of ``pixels_in``: dst[base + c * s_c + col * s_w] = src[at + col * pitch + c]
    for col < width, c < channels."""
    if s_c == 1:
        blocks = channels // LANES
        for col in range(width):
            d = base + col * s_w
            f = at + col * pitch
            for b in range(blocks):
                copy(dst, d + b * LANES, src, f + b * LANES)
            for c in range(blocks * LANES, channels):
                dst[d + c] = src[f + c]
    else:
        for c in range(channels):
            d = base + c * s_c
            for col in range(width):
                dst[d + col * s_w] = src[at + col * pitch + c]


@njit(fastmath=FASTMATH, cache=True)
def channels_in(
    dst, at, pitch, phase_len, stride, pad, src, base, s_c, s_w, width, channels
):  # pragma: no cover - compiled
    """One source row as channel rows split by the phase of the stride: padded column
    cp = col + pad goes to dst[at + c * pitch + (cp % stride) * phase_len + cp // stride]."""
    if stride == 1 and s_w == 1:
        blocks = width // LANES
        for c in range(channels):
            d = at + c * pitch + pad
            f = base + c * s_c
            for b in range(blocks):
                copy(dst, d + b * LANES, src, f + b * LANES)
            for col in range(blocks * LANES, width):
                dst[d + col] = src[f + col]
    elif stride == 1:
        for col in range(width):
            f = base + col * s_w
            d = at + pad + col
            for c in range(channels):
                dst[d + c * pitch] = src[f + c * s_c]
    else:
        for col in range(width):
            cp = col + pad
            f = base + col * s_w
            d = at + (cp % stride) * phase_len + cp // stride
            for c in range(channels):
                dst[d + c * pitch] = src[f + c * s_c]


@njit(inline="always", fastmath=FASTMATH)
def copy_run(dst, at, src, frm, count):  # pragma: no cover - compiled
    """dst[at : at + count] = src[frm : frm + count], LANES at a time."""
    blocks = count // LANES
    for b in range(blocks):
        copy(dst, at + b * LANES, src, frm + b * LANES)
    for e in range(blocks * LANES, count):
        dst[at + e] = src[frm + e]
