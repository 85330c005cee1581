"""The machine's own limits, measured, and the floors of the op and the layer against them.

A roofline: an operation cannot run faster than its multiply-adds at the machine's multiply-add
peak, nor than the bytes it must move at the machine's bandwidth. Both peaks are measured in the
benchmark's own run (``peaks``), where everything else runs:

- compute: a large fp32 matrix product (torch's, i.e. MKL/oneDNN on the CPU, cuBLAS on a GPU),
  in multiply-adds per second;
- bandwidth: a large tensor copy, bytes read + bytes written per second.

``floor`` is the larger of the two times; the tables report each candidate's time against it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Peaks:
    """Measured peaks: multiply-adds per second of a large fp32 matmul, bytes per second of a
    large copy (read + written)."""

    macs_per_s: float
    bytes_per_s: float


def _best_time(fn: Callable[[], object], reps: int, sync: Callable[[], None]) -> float:
    """The fastest of ``reps`` timed runs: what the machine can do (other jobs on a shared
    machine only add time; a median taken while one ran put the floors up to a third too low)."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def peaks(
    device: torch.device, size: int = 2048, copy_bytes: int = 1 << 28, reps: int = 11
) -> Peaks:
    """The fp32 matmul peak (a ``size`` x ``size`` x ``size`` product) and the copy bandwidth (a
    ``copy_bytes`` tensor) on ``device``, the fastest of ``reps`` runs."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    matmul = _best_time(lambda: torch.mm(a, b, out=out), reps, sync)
    src = torch.empty(copy_bytes // 4, device=device)
    dst = torch.empty_like(src)
    src.fill_(1.0)
    copy = _best_time(lambda: dst.copy_(src), reps, sync)
    return Peaks(size**3 / matmul, 2 * copy_bytes / copy)


def floor(macs: float, nbytes: float, found: Peaks) -> float:
    """The roofline floor in seconds: the larger of compute time and traffic time."""
    return max(macs / found.macs_per_s, nbytes / found.bytes_per_s)


def op_macs(batch: int, channels: int, size: int, k: int) -> int:
    """Multiply-adds of the op's forward+backward (stride 1): the forward, grad_input and the
    kernel gradient, each C*K*K per output pixel."""
    return 3 * batch * channels * k * k * size * size


def layer_macs(batch: int, channels: int, size: int, k: int, groups: int, reduced: int) -> int:
    """Multiply-adds of an ``Involution2d``'s forward+backward (stride 1), each product counted
    once per pass it needs at the least: the reduction C -> R (forward, input and weight
    gradients), the generation R -> G*K*K (forward, hidden-map and weight gradients) and the
    aggregation (``op_macs``). Normalisation and activations are not counted."""
    pixels = batch * size * size
    return (
        3 * pixels * channels * reduced
        + 3 * pixels * groups * k * k * reduced
        + op_macs(batch, channels, size, k)
    )


def layer_bytes(batch: int, channels: int, size: int, reduced: int, elem: int) -> int:
    """Bytes an ``Involution2d``'s forward+backward must move at the least, with the kernel
    never in memory: forward reads x and writes out, the C/R-channel hidden map is written and
    read; backward reads grad_out and x, writes grad_x, and writes and reads the hidden map's
    gradient (parameters are small). 5 C-channel maps and 4 R-channel maps."""
    pixels = batch * size * size
    return elem * pixels * (5 * channels + 4 * reduced)
