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
  of float32, or two of AVX2), inlined into the caller so that every tile index is a constant.

Every helper adds in a fixed order (a multiply-add per lane, fused where the CPU has FMA), so a
kernel built from them sums each result in the order its generic loop does, bit for bit.
"""

from __future__ import annotations

import llvmlite.ir as llvm_ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import RequireLiteralValue
from numba.extending import intrinsic

LANES = 16  # elements per step: the channel block of the NHWC tiles, the pixel block of gk


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
def prefetch(typingctx, ptr, offset, write):
    """Ask the CPU to bring the cache line of ptr[offset] into its caches (``write``: a literal
    bool, for writing). A hint: it never faults and changes no value."""
    if not isinstance(write, types.BooleanLiteral):
        raise RequireLiteralValue(write)
    intent = int(write.literal_value)

    def codegen(context, builder, signature, args):
        address = builder.gep(args[0], [args[1]])
        byte_ptr = builder.bitcast(address, llvm_ir.IntType(8).as_pointer())
        i32 = llvm_ir.IntType(32)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [byte_ptr.type, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [byte_ptr.type], fnty)
        # (address, 0 read / 1 write, locality 3: keep in all levels, 1: data)
        builder.call(fn, [byte_ptr, i32(intent), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(ptr, offset, write), codegen


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
