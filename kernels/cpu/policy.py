"""Layout and plane-flattening policy of the CPU kernels: which kernel family runs a call, and
how the blocked kernels split a batch into tasks.

Plain Python on shapes, no kernel code. Groups of a multiple of 16 channels run the blocked
kernels (``blocked_applies``); the NCHW / NHWC thresholds below choose among the older families
for the other group widths. They were set from the numba_cpu rows of the operator benchmark
(``make bench-ops``: ``python -m involution.bench.ops``, recorded in docs/benchmarks.md); to
retune one, change it here, rerun that benchmark and compare the rows.
"""

from __future__ import annotations

from numba import get_num_threads

from involution.kernels.cpu.flat import flat_applies
from involution.kernels.cpu.nhwc import VEC

# A kernel of at least this many taps (5x5) computes NHWC even from NCHW operands: below it (the
# 3x3 stem) the two transposes cost more than the NHWC loops save.
NHWC_MIN_TAPS = 25
# The kernel gradient stays on the flat-plane NCHW kernel on maps at least this wide, where that
# kernel beats NHWC and needs no transposed copies of grad_out and x.
FLAT_GRAD_KERNEL_MIN_WIDTH = 16
# Elements per flat task and channel: long loops, while the chunk still fits in L1.
FLAT_TASK_ELEMENTS = 2048


def nhwc_is_faster(channels_per_group: int, taps: int, operands_nhwc: bool = False) -> bool:
    """Layout of the forward and grad_input: NHWC when a group has at least a vector of channels
    (``VEC``; with narrower groups, e.g. G = C, there is nothing to vectorise across channels) and
    either the kernel has ``NHWC_MIN_TAPS`` taps or the operands are NHWC already."""
    return channels_per_group >= VEC and (taps >= NHWC_MIN_TAPS or operands_nhwc)


def grad_kernel_nhwc_is_faster(
    channels_per_group: int,
    taps: int,
    stride,
    width: int,
    out_width: int,
    operands_nhwc: bool = False,
) -> bool:
    """Layout of the kernel gradient: like ``nhwc_is_faster``, except that for kernels of
    ``NHWC_MIN_TAPS`` taps and more the flat-plane NCHW kernel runs wherever it applies on maps
    at least ``FLAT_GRAD_KERNEL_MIN_WIDTH`` wide, even at the price of transposing NHWC
    operands. Smaller kernels reach NHWC only with NHWC operands, and then stay there: two
    transposes and the flat kernel cost more than the NHWC kernel at 3x3."""
    if not nhwc_is_faster(channels_per_group, taps, operands_nhwc):
        return False
    if taps < NHWC_MIN_TAPS:
        return True
    return not (flat_applies(stride, width, out_width) and width >= FLAT_GRAD_KERNEL_MIN_WIDTH)


def flat_rows_per_task(outer: int, rows: int, width: int) -> int:
    """Rows per flat task: about ``FLAT_TASK_ELEMENTS`` per chunk, but at least 4 tasks per
    thread where the tensor allows it, so that all threads stay busy."""
    by_size = max(1, FLAT_TASK_ELEMENTS // max(width, 1))
    by_threads = max(1, (outer * rows) // (4 * get_num_threads()))
    return int(min(by_size, by_threads, rows))


# Tasks per thread the blocked kernels aim at: enough that an image finishing early does not leave
# a thread idle, few enough that each band's ring of rows is loaded rarely.
TASKS_PER_THREAD = 2


def bands(batch: int, rows: int, threads: int, halo: int = 0) -> int:
    """Bands of rows per image for the blocked kernels: one (whole images) when the batch alone
    gives every thread ``TASKS_PER_THREAD`` tasks, else enough bands for that, each at least
    ``halo`` + 1 rows (a band of the fused backward regenerates ``halo`` rows above it)."""
    wanted = -(-TASKS_PER_THREAD * threads // max(batch, 1))
    most = max(1, rows // (halo + 1)) if halo else max(rows, 1)
    return int(max(1, min(wanted, most)))
