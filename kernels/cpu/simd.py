"""Register tiles for the blocked CPU kernels: stack arrays, raw pointers and 16-lane steps.

Numba has no vector types. What it does have is LLVM, which keeps a small stack array in
registers when every access has a constant index after inlining and unrolling (SROA), and
which turns 16 independent scalar multiply-adds over consecutive addresses into one vector FMA
(the SLP vectoriser; ``dispatch`` switches it on, and the loop vectoriser off, while it compiles
these kernels: the loop vectoriser would otherwise vectorise the wrong loop, with gathers, and
keep the tile in memory). So a register tile is written here as

- ``stack_array(size, dtype)``: a pointer to ``size`` elements on the stack (an ``alloca``);
- ``pointer(array)``: a pointer to an array's first element, indexed with plain int64 offsets
  (no negative-index fix-up, no bounds logic: the kernels compute their offsets explicitly);
  it does not keep the array alive: ``keep_alive`` after the pointer's last use does;
- the helpers below, each one 16-lane step (``LANES`` consecutive elements: one AVX-512 register
  of float32, or two of AVX2), inlined into the caller so that every tile index is a constant;
- ``transpose_block``, ``transpose_part``, ``store_first`` and ``copy_first``: a LANES x LANES
  transpose in registers (whole, or the masked part of one at a row's end), a masked store and a
  masked copy, written as LLVM IR (shuffles, ``llvm.masked.load``/``store``), which the
  vectorisers do not find in scalar loops.

Every helper adds in a fixed order (a multiply-add per lane, fused where the CPU has FMA), so a
kernel built from them sums each result in the order its generic loop does, bit for bit.
"""

from __future__ import annotations

import llvmlite.ir as llvm_ir
from llvmlite import ir_layer_typed_pointers_enabled as _TYPED_POINTERS
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import RequireLiteralValue
from numba.extending import intrinsic

LANES = 16  # elements per step: the channel block of the NHWC tiles, the pixel block of gk


def _transpose_rows(builder, rows: list) -> None:
    """Transpose LANES vectors of LANES lanes in place: four rounds swap the off-diagonal h x h
    sub-blocks of every 2h x 2h block, h = 8, 4, 2, 1 (two-vector shuffles)."""
    i32 = llvm_ir.IntType(32)
    h = LANES // 2
    while h:
        top_mask = [c if not c & h else LANES + c - h for c in range(LANES)]
        bottom_mask = [c + h if not c & h else LANES + c for c in range(LANES)]
        top_c = llvm_ir.Constant(llvm_ir.VectorType(i32, LANES), top_mask)
        bottom_c = llvm_ir.Constant(llvm_ir.VectorType(i32, LANES), bottom_mask)
        for r in range(LANES):
            if r & h:
                continue
            top, bottom = rows[r], rows[r + h]
            rows[r] = builder.shuffle_vector(top, bottom, top_c)
            rows[r + h] = builder.shuffle_vector(top, bottom, bottom_c)
        h //= 2


def _lanes_below(builder, limit):
    """The LANES-lane mask of the lanes whose index is below ``limit`` (an int64)."""
    i32, i64 = llvm_ir.IntType(32), llvm_ir.IntType(64)
    lanes = llvm_ir.Constant(llvm_ir.VectorType(i64, LANES), list(range(LANES)))
    empty = llvm_ir.Constant(llvm_ir.VectorType(i64, LANES), None)
    splat = builder.insert_element(empty, limit, i64(0))
    splat = builder.shuffle_vector(
        splat, splat, llvm_ir.Constant(llvm_ir.VectorType(i32, LANES), None)
    )
    return builder.icmp_unsigned("<", lanes, splat)


def _masked(builder, vec_t):
    """(masked load, masked store): LLVM's ``llvm.masked.load``/``store`` of ``vec_t``."""
    i1, i32 = llvm_ir.IntType(1), llvm_ir.IntType(32)
    mask_t = llvm_ir.VectorType(i1, LANES)
    suffix = f"v{LANES}{vec_t.element.intrinsic_name}"
    pointer_suffix = f"p0{suffix if _TYPED_POINTERS else ''}"
    load = builder.module.declare_intrinsic(
        f"llvm.masked.load.{suffix}.{pointer_suffix}",
        (),
        llvm_ir.FunctionType(vec_t, [vec_t.as_pointer(), i32, mask_t, vec_t]),
    )
    store = builder.module.declare_intrinsic(
        f"llvm.masked.store.{suffix}.{pointer_suffix}",
        (),
        llvm_ir.FunctionType(llvm_ir.VoidType(), [vec_t, vec_t.as_pointer(), i32, mask_t]),
    )
    return load, store


@intrinsic
def stack_array(typingctx, size, dtype):
    """``stack_array(N, dtype)``: a pointer to N uninitialised elements on the stack. ``N`` must
    be a compile-time constant (a literal or a module-level int)."""
    if not isinstance(size, types.IntegerLiteral):
        raise RequireLiteralValue(size)
    elem = dtype.dtype if isinstance(dtype, types.DType) else dtype.instance_type
    count = size.literal_value

    def codegen(context, builder, signature, args):
        ty = context.get_data_type(elem)
        slot = cgutils.alloca_once(builder, llvm_ir.ArrayType(ty, count))
        return builder.bitcast(slot, ty.as_pointer())

    return types.CPointer(elem)(size, dtype), codegen


@intrinsic
def pointer(typingctx, array):
    """A pointer to ``array``'s first element (C-contiguous arrays: offsets are row-major)."""

    def codegen(context, builder, signature, args):
        return context.make_array(signature.args[0])(context, builder, args[0]).data

    return types.CPointer(array.dtype)(array), codegen


@intrinsic
def keep_alive(typingctx, arrays):
    """A use of ``arrays`` (a tuple) that generates no code. Numba frees an array after the
    last use of its variable, and a ``pointer`` taken from it is not one: a scratch array known
    only through its pointer would be freed (and its memory handed to the other threads'
    allocations) while the kernel still writes through the pointer. A kernel calls this after
    the last use of its scratch arrays' pointers."""

    def codegen(context, builder, signature, args):
        return context.get_dummy_value()

    return types.void(arrays), codegen


@intrinsic
def store_first(typingctx, dst, at, src, frm, count):
    """dst[at : at + count] = src[frm : frm + count] for count < LANES, as one masked vector
    store (the tail of a row: element by element it took 1.3x as long at 14x14 maps). Reads all
    LANES elements of src from ``frm``; writes nothing of dst beyond ``count``."""

    def codegen(context, builder, signature, args):
        dptr, dat, sptr, sfrm, n = args
        elem = context.get_data_type(signature.args[0].dtype)
        vec_t = llvm_ir.VectorType(elem, LANES)
        source = builder.bitcast(builder.gep(sptr, [sfrm]), vec_t.as_pointer())
        value = builder.load(source, align=elem.get_abi_alignment(context.target_data))
        target = builder.bitcast(builder.gep(dptr, [dat]), vec_t.as_pointer())
        mask = _lanes_below(builder, n)
        _, store_fn = _masked(builder, vec_t)
        align = llvm_ir.IntType(32)(elem.get_abi_alignment(context.target_data))
        builder.call(store_fn, [value, target, align, mask])
        return context.get_dummy_value()

    return types.void(dst, at, src, frm, count), codegen


@intrinsic
def copy_first(typingctx, dst, at, src, frm, count):
    """dst[at : at + count] = src[frm : frm + count] for count < LANES: one masked load and one
    masked store, nothing read or written beyond ``count`` (the end of a row narrower than a
    block, which element by element cost two memory operations per element)."""

    def codegen(context, builder, signature, args):
        dptr, dat, sptr, sfrm, n = args
        elem = context.get_data_type(signature.args[0].dtype)
        vec_t = llvm_ir.VectorType(elem, LANES)
        align = elem.get_abi_alignment(context.target_data)
        i32 = llvm_ir.IntType(32)
        mask = _lanes_below(builder, n)
        load_fn, store_fn = _masked(builder, vec_t)
        source = builder.bitcast(builder.gep(sptr, [sfrm]), vec_t.as_pointer())
        value = builder.call(load_fn, [source, i32(align), mask, llvm_ir.Constant(vec_t, None)])
        target = builder.bitcast(builder.gep(dptr, [dat]), vec_t.as_pointer())
        builder.call(store_fn, [value, target, i32(align), mask])
        return context.get_dummy_value()

    return types.void(dst, at, src, frm, count), codegen


@intrinsic
def transpose_block(typingctx, dst, dat, dpitch, src, sat, spitch):
    """dst[dat + k * dpitch + r] = src[sat + r * spitch + k] for r, k < LANES: a LANES x LANES
    block transposed in registers (LANES vector loads, 4 x LANES two-vector shuffles, LANES
    vector stores), where element by element a transpose costs two memory operations per
    element (the NCHW rows into and out of the blocked kernels' pixel rows).

    Four rounds swap the off-diagonal h x h sub-blocks of every 2h x 2h block, h = 8, 4, 2, 1:
    together, the transpose."""

    def codegen(context, builder, signature, args):
        dptr, d_at, d_pitch, sptr, s_at, s_pitch = args
        elem = context.get_data_type(signature.args[0].dtype)
        vec_t = llvm_ir.VectorType(elem, LANES)
        align = elem.get_abi_alignment(context.target_data)
        rows = []
        for r in range(LANES):
            offset = builder.add(s_at, builder.mul(s_pitch, s_pitch.type(r)))
            at = builder.bitcast(builder.gep(sptr, [offset]), vec_t.as_pointer())
            rows.append(builder.load(at, align=align))
        _transpose_rows(builder, rows)
        for k in range(LANES):
            offset = builder.add(d_at, builder.mul(d_pitch, d_pitch.type(k)))
            at = builder.bitcast(builder.gep(dptr, [offset]), vec_t.as_pointer())
            builder.store(rows[k], at, align=align)
        return context.get_dummy_value()

    return types.void(dst, dat, dpitch, src, sat, spitch), codegen


@intrinsic
def transpose_part(typingctx, dst, dat, dpitch, src, sat, spitch, rows, cols):
    """``transpose_block`` for the part of a block at a map's edge: dst[dat + k * dpitch + r] =
    src[sat + r * spitch + k] for r < ``rows`` and k < ``cols`` (both at most LANES), nothing
    read or written outside them (masked loads and stores). The last columns of a row that is
    not a whole number of LANES wide (7, 14, 28, 56, 112 at RedNet's maps), which element by
    element cost two memory operations each."""

    def codegen(context, builder, signature, args):
        dptr, d_at, d_pitch, sptr, s_at, s_pitch, n_rows, n_cols = args
        elem = context.get_data_type(signature.args[0].dtype)
        vec_t = llvm_ir.VectorType(elem, LANES)
        align = elem.get_abi_alignment(context.target_data)
        i1, i32, i64 = llvm_ir.IntType(1), llvm_ir.IntType(32), llvm_ir.IntType(64)
        mask_t = llvm_ir.VectorType(i1, LANES)

        def uniform(flag):  # every lane ``flag``
            splat = builder.insert_element(llvm_ir.Constant(mask_t, None), flag, i64(0))
            return builder.shuffle_vector(
                splat, splat, llvm_ir.Constant(llvm_ir.VectorType(i32, LANES), None)
            )

        load_fn, store_fn = _masked(builder, vec_t)
        col_mask, row_mask = _lanes_below(builder, n_cols), _lanes_below(builder, n_rows)
        zero = llvm_ir.Constant(vec_t, None)
        # A row outside the part is read and written through the last row inside it, with no
        # lane enabled: its own address can lie past the buffer, and on this AMD EPYC a masked
        # access, even with every lane off, at a page not mapped in took a microcode assist
        # (the NCHW forward at 8x512x7x7 ran 5x slower once malloc_trim had unmapped the pages
        # after a staged row).
        rows = []
        last_row, last_col = builder.sub(n_rows, i64(1)), builder.sub(n_cols, i64(1))
        for r in range(LANES):
            inside = builder.icmp_unsigned("<", i64(r), n_rows)
            row = builder.select(inside, i64(r), last_row)
            offset = builder.add(s_at, builder.mul(s_pitch, row))
            at = builder.bitcast(builder.gep(sptr, [offset]), vec_t.as_pointer())
            mask = builder.and_(col_mask, uniform(inside))
            rows.append(builder.call(load_fn, [at, i32(align), mask, zero]))
        _transpose_rows(builder, rows)
        for k in range(LANES):
            inside = builder.icmp_unsigned("<", i64(k), n_cols)
            col = builder.select(inside, i64(k), last_col)
            offset = builder.add(d_at, builder.mul(d_pitch, col))
            at = builder.bitcast(builder.gep(dptr, [offset]), vec_t.as_pointer())
            mask = builder.and_(row_mask, uniform(inside))
            builder.call(store_fn, [rows[k], at, i32(align), mask])
        return context.get_dummy_value()

    return types.void(dst, dat, dpitch, src, sat, spitch, rows, cols), codegen


FASTMATH = {"contract"}  # fused multiply-adds, never reassociated: every sum keeps its order


@njit(inline="always", fastmath=FASTMATH)
def zero(p, at):  # pragma: no cover - compiled
    """p[at : at + LANES] = 0."""
    for lane in range(LANES):
        p[at + lane] = 0


@njit(inline="always", fastmath=FASTMATH)
def copy(dst, at, src, frm):  # pragma: no cover - compiled
    """dst[at : at + LANES] = src[frm : frm + LANES]."""
    for lane in range(LANES):
        dst[at + lane] = src[frm + lane]


@njit(inline="always", fastmath=FASTMATH)
def add_into(dst, at, src, frm):  # pragma: no cover - compiled
    """dst[at : at + LANES] += src[frm : frm + LANES]."""
    for lane in range(LANES):
        dst[at + lane] += src[frm + lane]


@njit(inline="always", fastmath=FASTMATH)
def fma(acc, at, k, src, frm):  # pragma: no cover - compiled
    """acc[at : at + LANES] += k * src[frm : frm + LANES] (k a scalar, broadcast)."""
    for lane in range(LANES):
        acc[at + lane] += k * src[frm + lane]


@njit(inline="always", fastmath=FASTMATH)
def fma_vv(acc, at, a, afrm, b, bfrm):  # pragma: no cover - compiled
    """acc[at : at + LANES] += a[afrm : afrm + LANES] * b[bfrm : bfrm + LANES]."""
    for lane in range(LANES):
        acc[at + lane] += a[afrm + lane] * b[bfrm + lane]


@njit(inline="always", fastmath=FASTMATH)
def fma4(acc, k, kat, kstep, src, frm, step):  # pragma: no cover - compiled
    """A tile of 4 pixels x LANES channels: acc[q] += k[kat + q * kstep] * src[frm + q * step]
    for the four pixels q (four independent FMA chains)."""
    fma(acc, 0, k[kat], src, frm)
    fma(acc, LANES, k[kat + kstep], src, frm + step)
    fma(acc, 2 * LANES, k[kat + 2 * kstep], src, frm + 2 * step)
    fma(acc, 3 * LANES, k[kat + 3 * kstep], src, frm + 3 * step)
