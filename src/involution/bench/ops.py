"""Operator benchmark: the involution op and the involution layer against the machine's roofline
and against the convolutions they replace.

    python -m involution.bench.ops [--reps 11] [--shapes 64x56x7 ...] [--batches 8 ...]
                                   [--dtypes float32 ...] [--backends reference ...]
                                   [--compiled reference torch] [--no-compile] [--no-layers]
                                   [--heap steady|default]
                                   [--output docs/benchmarks.md] [--render]

At the RedNet-50 shapes (K=7 with G=C/16 at C=64@56, 128@28, 256@14, 512@7, and the stem's C=32@112
with K=3; on the CPU batch 8 and 32 in float32, on a GPU batch 8 and 64 in float32, float16 and
bfloat16) every candidate runs forward+backward on the same tensors, interleaved round-robin in
one process.

The op table (gradients of the input and the kernel): depthwise conv (KxK, groups=C, the
practical yardstick), ``reference`` (unfold), the Numba backend of the device (``numba_cpu`` on
NCHW and on channels_last operands, or ``numba_cuda``) in the dtypes it supports, ``torch``
(shifted multiply-accumulates, what ``backend="auto"`` falls back to where no Numba backend runs),
(``--backends`` keeps some of these eager candidates, the depthwise conv always), and under
``torch.compile`` (Inductor, static shapes, ``--compiled``) the reference and the
``torch`` backend, whose taps Inductor fuses (``involution.ops._torch``), with

- the median (and fastest) wall time of forward+backward,
- the peak memory the step adds over what its inputs already hold (CPU: peak resident set,
  reset through /proc/self/clear_refs; GPU: ``torch.cuda.max_memory_allocated``),
- the ratio to the depthwise conv;
- CPU: the roofline (``bench.roofline``): achieved multiply-adds per second and bytes per second,
  the floor (the larger of the op's multiply-adds at the fp32 matmul peak and its bytes at the
  copy bandwidth, both measured in the same run) and the ratio to it, and the numba_cpu steps
  cut into their three ops (``_part_steps``: forward, grad_input, grad_kernel, each timed alone
  with the candidates): each op's time and share of the matmul peak, and the rest of the step;
- GPU: the ratio to the unfold reference and to the memory-bandwidth floor (``floor_bytes`` over
  the device-to-device copy bandwidth measured in the same run).

The layer table (CPU; ``--no-layers`` skips it): per shape and memory format, ``Involution2d``
as ``make_spatial_op`` builds it (the fused op), the unfused layer (the kernel made and kept,
``recompute_kernel=False``), the unfused layer recomputed in backward (the previous default,
kept as the memory yardstick), the 3x3 convolution C -> C the layer replaces and the 7x7
depthwise convolution: forward+backward (gradients of the input and the parameters), peak
memory (the resident set, and the step's tensors: ``tensor_peak``, which the memory target is
judged on), multiply-adds per second, the layer's roofline floor (``roofline.layer_macs`` and
``layer_bytes``) and the ratios to the 3x3 conv and the depthwise conv.

The results go to JSON records beside the output file (``benchmarks.ops.json`` on the CPU,
``benchmarks.ops.gpu.json`` on a GPU: values, machine, versions, command, date; read back by
``bench.report.read_records``), and the section rendered from them replaces this benchmark's own
section of the output file (between its markers), so other benchmarks can keep theirs in the
same file. ``--render`` measures nothing and rebuilds the sections from the records.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from involution.bench import report, roofline, sections
from involution.ops import involution2d, involution2d_reference

NAME = "ops"  # the CPU records: benchmarks.ops.json beside the markdown
GPU_NAME = "ops.gpu"  # the GPU records: benchmarks.ops.gpu.json
SECTION = "involution.bench.ops"  # the CPU table
GPU_SECTION = "involution.bench.ops.gpu"  # the GPU table: both can live in docs/benchmarks.md
SECTIONS = {NAME: SECTION, GPU_NAME: GPU_SECTION}
BEGIN, END = sections.markers(SECTION)

# (channels, size, kernel size); groups = channels / 16
REDNET50_SHAPES = [(64, 56, 7), (128, 28, 7), (256, 14, 7), (512, 7, 7), (32, 112, 3)]
DTYPES = ("float32", "float16", "bfloat16", "float64")
GPU_DTYPES = ["float32", "float16", "bfloat16"]


# ------------------------------------------------------------------------------------------------
# Measurement helpers
# ------------------------------------------------------------------------------------------------


def _rss_kib() -> tuple[int, int] | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = dict(re.findall(r"^Vm(HWM|RSS):\s+(\d+) kB", status, re.M))
    if "HWM" not in found or "RSS" not in found:
        return None
    return int(found["HWM"]), int(found["RSS"])


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is then a lower bound
        pass


# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def steady_heap(limit: int = 1 << 30) -> bool:
    """Keep freed blocks below ``limit`` bytes on the heap and never hand the heap's top back to
    the kernel by itself (glibc ``mallopt`` of the mmap and trim thresholds); False without glibc.

    By default glibc maps big blocks (here 13-50 MB feature maps) straight from the kernel and
    unmaps them on free, so each step pays page faults to touch fresh zeroed pages, and which
    candidate pays how much depends on the order of frees and on glibc's adaptive threshold. A
    training loop in steady state recycles its buffers; a high mmap threshold gives every
    candidate that steady state. Trimming is off: with a trim threshold, the gigabytes one
    candidate frees (the unfold reference's 3 GB) were handed back inside whichever later
    candidate's free() found them at the heap's top, 0.1-0.25 s of system time charged to a
    random row (6-30x its real time). ``peak_memory`` still trims explicitly."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit) and libc.mallopt(_M_TRIM_THRESHOLD, -1))
    except (OSError, AttributeError):
        return False


def tensor_peak(fn: Callable[[], object]) -> int:
    """Bytes of the tensor storages that ``fn()`` creates and holds at once, at their peak: what
    a step's tensors need, whatever the allocator makes of it (the CPU's counterpart of
    ``torch.cuda.max_memory_allocated``; the resident set of ``peak_memory`` adds the C
    allocator's fragmentation and free lists). Every op's outputs are seen at dispatch
    (``TorchDispatchMode``) and a storage counts until it is freed; scratch memory inside an op
    (a kernel's rows in cache, a library's workspace) is not seen."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    live: dict[int, int] = {}
    total = peak = 0

    def freed(key: int) -> None:
        nonlocal total
        total -= live.pop(key, 0)

    class Tracker(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal total, peak
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                    continue
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in live:
                    live[key] = storage.nbytes()
                    total += live[key]
                    weakref.finalize(storage, freed, key)
            peak = max(peak, total)
            return out

    gc.collect()
    with Tracker():
        fn()
    return peak


def peak_memory(fn: Callable[[], object]) -> int | None:
    """Bytes by which ``fn()`` raises the peak resident set of this process above what it holds
    when called (Linux: the high-water mark is reset through /proc/self/clear_refs after glibc's
    free lists are trimmed); None where that is not possible."""
    gc.collect()
    _malloc_trim()  # hand freed heap pages back, so that re-used memory shows up as growth
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _rss_kib()
    if before is None:
        return None
    fn()
    after = _rss_kib()
    if after is None:
        return None
    return max(0, after[0] - before[1]) * 1024


def cuda_peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return 2 * nbytes / statistics.median(times)


@dataclass
class Candidate:
    name: str
    step: Callable[[], None]
    dtype: str = "float32"
    times: list[float] = field(default_factory=list)
    peak: int | None = None
    tensors: int | None = None  # the step's own tensors at their peak (``tensor_peak``)
    error: str | None = None
    # the name of the candidate whose step this one is a piece of (``_part_steps``): timed with
    # the others, reported inside that candidate's row, no row or memory measurement of its own
    part_of: str | None = None


# How a CPU step is timed, in the records and the section's method line.
PRIMED = (
    "each timed step right after an untimed step of the same candidate, so that it runs with its "
    "own operands in the caches and the worker threads awake, whatever candidate ran before it"
)


def _interleaved(
    cands: list[Candidate],
    reps: int,
    warmup: int,
    sync: Callable[[], None],
    primed: bool = False,
) -> None:
    """``reps`` rounds of every candidate in turn (after ``warmup`` untimed steps each); with
    ``primed`` (the CPU) each timed step right after an untimed one of the same candidate.

    Without it a step paid for what ran before it: the lines the previous candidate left dirty
    in the caches, and OpenMP's worker threads gone to sleep while a candidate ran on other
    threads (or idled). At 8x512x7x7 the numba_cpu op took 1.36 ms after itself, 2.45 ms after
    the unfold reference, 2.0 ms after 10 ms of sleep, and 5.9 ms in one full run."""
    live = []
    for cand in cands:
        try:
            for _ in range(warmup):
                cand.step()
            sync()
            live.append(cand)
        except Exception as exc:  # noqa: BLE001 - reported in the table (e.g. out of memory)
            cand.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    for _ in range(reps):
        for cand in live:
            if primed:
                cand.step()
            sync()
            start = time.perf_counter()
            cand.step()
            sync()
            cand.times.append(time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------
# One shape
# ------------------------------------------------------------------------------------------------


def _compile_in_process() -> None:
    """Inductor compiles in a pool of worker processes by default. When its cache is warm the
    compile returns while those workers are still starting (each imports torch), and they steal a
    core from the first shape's measurements: on 2 cores that once tripled the depthwise conv's
    median. Compiling in this process leaves nothing running behind the measurements."""
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1


COMPILED = ("reference", "torch")  # the backends --compiled may name


def _steps(batch, channels, size, k, device, dtype, backends, compiled):
    """Candidates doing forward+backward at one shape (stride 1, padding K//2, G = C/16); those
    of ``compiled`` (backend names) once more under ``torch.compile``."""
    groups = channels // 16
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device, dtype).requires_grad_()
    kern = (
        torch.randn(batch, groups, k, k, size, size, generator=gen)
        .to(device, dtype)
        .requires_grad_()
    )
    weight = torch.randn(channels, 1, k, k, generator=gen).to(device, dtype).requires_grad_()
    grad = torch.randn(batch, channels, size, size, generator=gen).to(device, dtype)
    pad = (k - 1) // 2

    def clear():
        x.grad = kern.grad = weight.grad = None

    def depthwise():
        F.conv2d(x, weight, padding=pad, groups=channels).backward(grad)
        clear()

    def op(backend, inp=x, upstream=grad):
        def step():
            involution2d(inp, kern, 1, pad, 1, backend).backward(upstream)
            clear()
            inp.grad = None

        return step

    tag = str(dtype).replace("torch.", "")
    cands = [Candidate("depthwise conv2d", depthwise, tag)]
    for backend in backends:
        cands.append(Candidate(backend, op(backend), tag))
        if backend == "numba_cpu":  # the same op on channels_last operands
            last = torch.channels_last
            x_cl = x.detach().contiguous(memory_format=last).requires_grad_()
            grad_cl = grad.contiguous(memory_format=last)
            cands.append(Candidate(f"{backend}, channels_last", op(backend, x_cl, grad_cl), tag))
            cands += _part_steps(backend, x, kern, grad, pad, tag)
            cands += _part_steps(f"{backend}, channels_last", x_cl, kern, grad_cl, pad, tag)
    if compiled and device.type == "cpu":  # a GPU machine has the cores for compile workers
        _compile_in_process()
    if compiled:
        # Dynamo keeps the compiled variants of a function with its code, across torch.compile
        # wrappers: past its recompile limit (8), e.g. 5 shapes x 2 dtypes, the later shapes
        # would silently run eagerly. Each shape's candidates are compiled afresh anyway.
        torch._dynamo.reset()
    for backend in compiled:
        if backend == "reference":
            fn = torch.compile(involution2d_reference, dynamic=False)
            args = ((1, 1), (pad, pad), (1, 1))
        else:
            fn = torch.compile(involution2d, dynamic=False, fullgraph=True)
            args = (1, pad, 1, backend)

        def compiled_step(fn=fn, args=args):
            fn(x, kern, *args).backward(grad)
            clear()

        cands.append(Candidate(f"torch.compile({backend})", compiled_step, tag))
    tensors = (x, kern, grad)
    return cands, tensors


PARTS = ("forward", "grad_input", "grad_kernel")  # the op's three ops, in a step's order


def _part_steps(
    name: str, inp: torch.Tensor, kern: torch.Tensor, upstream: torch.Tensor, pad: int, tag: str
) -> list[Candidate]:
    """Candidate ``name``'s step (the ``numba_cpu`` op, forward+backward) cut into its three
    ops, each alone on the same tensors without autograd: ``involution2d``,
    ``involution2d_grad_input`` and ``involution2d_grad_kernel`` through their registered ops
    (``torch.ops.involution``), as the step's autograd calls them. The op's step minus the three
    is what runs around its kernels (argument checks, the autograd graph, the dispatch)."""
    x, k = inp.detach(), kern.detach()
    conv = ([1, 1], [pad, pad], [1, 1], "numba_cpu")
    size, ksize, groups = list(x.shape[2:]), list(k.shape[2:4]), k.shape[1]
    found = torch.ops.involution
    steps = {
        "forward": lambda: found.involution2d(x, k, *conv),
        "grad_input": lambda: found.involution2d_grad_input(upstream, k, size, *conv),
        "grad_kernel": lambda: found.involution2d_grad_kernel(upstream, x, ksize, groups, *conv),
    }
    return [Candidate(f"{name}: {part}", steps[part], tag, part_of=name) for part in PARTS]


def _split_parts(cands: list[Candidate]) -> tuple[list[Candidate], dict[str, dict[str, float]]]:
    """(the candidates with rows of their own, {candidate name: {part: median seconds}})."""
    parts: dict[str, dict[str, float]] = {}
    for cand in cands:
        if cand.part_of is not None and cand.times:
            part = cand.name.rsplit(": ", 1)[1]
            parts.setdefault(cand.part_of, {})[part] = statistics.median(cand.times)
    return [c for c in cands if c.part_of is None], parts


def floor_bytes(batch: int, channels: int, size: int, k: int, elem: int) -> int:
    """Bytes one forward+backward must move at the least (stride 1, G = C/16): each operand read
    once and each result written once, wherever it is computed.

    forward reads x and the kernel map and writes out; backward, which runs later and cannot share
    the forward's reads, reads grad_out, x and the kernel map and writes grad_x and grad_kernel:
    5 feature maps + 3 kernel maps. (Our three kernels read grad_out once more, in grad_input and
    in grad_kernel: 6 + 3, about 1.07x the floor at RedNet-50's 7x7 shapes.)"""
    groups = channels // 16
    feature_map = batch * channels * size * size
    kernel_map = batch * groups * k * k * size * size
    forward = feature_map + kernel_map + feature_map  # x, kernel read; out written
    # grad_out, x, kernel read; grad_x, grad_kernel written
    backward = 3 * feature_map + 2 * kernel_map
    return elem * (forward + backward)


def shape_rows(
    cands: list[Candidate],
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    bandwidth: float | roofline.Peaks | None,
    with_reference: bool,
) -> list[dict]:
    """Table rows of the candidates measured at one (N, C, S, K) and dtype: times, the ratio to
    the depthwise conv, and (``with_reference``) to the unfold reference; with a ``bandwidth``
    (bytes/s) also the bandwidth floor's time and the ratio to it, with measured ``Peaks`` the
    roofline: multiply-adds and bytes per second, the floor and the ratio to it."""
    batch, channels, size, k = shape
    cands, parts = _split_parts(cands)
    if isinstance(bandwidth, roofline.Peaks):
        rows = _roofline_rows(cands, shape, dtype, bandwidth)
        for row in rows:
            if len(parts.get(row["name"], ())) == len(PARTS):
                row["parts"] = parts[row["name"]]
        return rows

    def median(name: str) -> float | None:
        found = next((c for c in cands if c.name.startswith(name) and c.times), None)
        return statistics.median(found.times) if found else None

    base, ref = median("depthwise"), median("reference")
    floor = None
    if bandwidth:
        elem = torch.empty((), dtype=dtype).element_size()
        floor = floor_bytes(batch, channels, size, k, elem) / bandwidth
    rows = []
    for cand in cands:
        mid = statistics.median(cand.times) if cand.times else None
        row = {
            "shape": f"{batch}, {channels}, {size}x{size}, {k}, {channels // 16}",
            "dtype": cand.dtype,
            "name": cand.name,
            "median": mid,
            "min": min(cand.times) if cand.times else None,
            "peak": cand.peak,
            "ratio": mid / base if (mid and base) else None,
            "error": cand.error,
        }
        if with_reference:
            row["x_reference"] = mid / ref if (mid and ref) else None
        if floor is not None:
            row["floor"] = floor
            row["x_floor"] = mid / floor if mid else None
        rows.append(row)
    return rows


def _roofline_rows(cands, shape, dtype, found: roofline.Peaks) -> list[dict]:
    """``shape_rows`` on the CPU: each candidate against the op's roofline floor."""
    batch, channels, size, k = shape
    elem = torch.empty((), dtype=dtype).element_size()
    macs = roofline.op_macs(batch, channels, size, k)
    nbytes = floor_bytes(batch, channels, size, k, elem)
    floor = roofline.floor(macs, nbytes, found)
    base = next((c for c in cands if c.name.startswith("depthwise") and c.times), None)
    base_mid = statistics.median(base.times) if base else None
    rows = []
    for cand in cands:
        mid = statistics.median(cand.times) if cand.times else None
        rows.append(
            {
                "shape": f"{batch}, {channels}, {size}x{size}, {k}, {channels // 16}",
                "dtype": cand.dtype,
                "name": cand.name,
                "median": mid,
                "min": min(cand.times) if cand.times else None,
                "peak": cand.peak,
                "ratio": mid / base_mid if (mid and base_mid) else None,
                "error": cand.error,
                "macs": macs,
                "bytes": nbytes,
                "macs_per_s": macs / mid if mid else None,
                "bytes_per_s": nbytes / mid if mid else None,
                "floor": floor,
                "x_floor": mid / floor if mid else None,
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------
# The layer against the convolutions it replaces
# ------------------------------------------------------------------------------------------------

LAYER_FORMATS = ("contiguous", "channels_last")


def _layer_steps(batch, channels, size, k, memory_format):
    """Candidates doing a layer's forward+backward (gradients of the input and the parameters)
    at one shape and memory format, and the layer's (groups, reduced channels)."""
    from involution.layers import Involution2d, make_spatial_op, recomputed

    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen)
    x = x.contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(batch, channels, size, size, generator=gen).contiguous(memory_format=fmt)
    torch.manual_seed(0)
    operator = {"name": "involution", "kernel_size": k, "group_channels": 16}
    fused = make_spatial_op(operator, channels)
    plain = make_spatial_op({**operator, "recompute_kernel": False}, channels)
    conv = make_spatial_op({"name": "convolution", "kernel_size": 3}, channels)
    depthwise = make_spatial_op(
        {"name": "convolution", "kernel_size": 7, "groups": channels}, channels
    )
    for module in (fused, plain, conv, depthwise):
        module.to(memory_format=fmt)
    assert isinstance(fused, Involution2d)

    def previous_default(inp):
        # the unfused layer as one recomputed region: only its input kept for backward
        return recomputed(plain, plain, inp)

    def step(fn, module):
        def run():
            fn(x).backward(grad)
            x.grad = None
            module.zero_grad(set_to_none=True)

        return run

    tag = "channels_last" if memory_format == "channels_last" else "NCHW"
    cands = [
        Candidate("Involution2d", step(fused, fused), tag),
        Candidate("Involution2d, unfused (kernel kept)", step(plain, plain), tag),
        Candidate(
            "Involution2d, unfused, recomputed (previous default)",
            step(previous_default, plain),
            tag,
        ),
        Candidate("conv 3x3", step(conv, conv), tag),
        Candidate("depthwise conv 7x7", step(depthwise, depthwise), tag),
    ]
    return cands, (fused.groups, fused.reduce.out_channels), (x, grad)


def layer_rows(cands, shape, groups_reduced, found: roofline.Peaks) -> list[dict]:
    """Rows of the layer table at one (N, C, S, K): times, peak memory, the layer's roofline and
    the ratios to the 3x3 conv and the 7x7 depthwise conv of the same maps."""
    batch, channels, size, k = shape
    groups, reduced = groups_reduced
    macs = roofline.layer_macs(batch, channels, size, k, groups, reduced)
    nbytes = roofline.layer_bytes(batch, channels, size, reduced, 4)
    floor = roofline.floor(macs, nbytes, found)

    def median(prefix):
        found_ = next((c for c in cands if c.name.startswith(prefix) and c.times), None)
        return statistics.median(found_.times) if found_ else None

    conv, depthwise = median("conv 3x3"), median("depthwise")
    pixels = batch * size * size
    own_macs = {  # forward, input and weight gradients of the two convolutions
        "conv 3x3": 3 * 9 * channels * channels * pixels,
        "depthwise conv 7x7": 3 * 49 * channels * pixels,
    }
    rows = []
    for cand in cands:
        mid = statistics.median(cand.times) if cand.times else None
        involution = cand.name.startswith("Involution2d")
        done = macs if involution else own_macs.get(cand.name)
        rows.append(
            {
                "shape": f"{batch}, {channels}, {size}x{size}, {k}",
                "format": cand.dtype,
                "name": cand.name,
                "median": mid,
                "min": min(cand.times) if cand.times else None,
                "peak": cand.peak,
                "tensor_peak": cand.tensors,
                "error": cand.error,
                "macs": done,
                "macs_per_s": done / mid if (mid and done) else None,
                "floor": floor if involution else None,
                "x_floor": mid / floor if (mid and involution) else None,
                "x_conv": mid / conv if (mid and conv) else None,
                "x_depthwise": mid / depthwise if (mid and depthwise) else None,
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_properties(device).name


def _fmt_ms(t: float | None) -> str:
    return "-" if t is None else f"{t * 1e3:.2f}"


def _fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _fmt_mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _table(rows: list[dict], on_gpu: bool) -> list[str]:
    head = [
        "shape (N, C, HxW, K, G)",
        "dtype",
        "backend",
        "forward+backward median (ms)",
        "min (ms)",
        "peak extra memory (MiB)",
        "vs depthwise conv",
    ]
    roofline_columns = not on_gpu and any(r.get("macs") for r in rows)
    if on_gpu:
        head += ["vs reference", "bandwidth floor (ms)", "vs floor"]
    elif roofline_columns:
        head += ["G multiply-adds/s", "GB/s", "roofline floor (ms)", "vs floor"]
    lines = report.table_head(head)
    for r in rows:
        cells = [
            r["shape"],
            r["dtype"],
            r["name"],
            _fmt_ms(r["median"]),
            _fmt_ms(r["min"]),
            _fmt_mib(r["peak"]),
        ]
        cells.append("-" if r["ratio"] is None else f"{r['ratio']:.2f}")
        if on_gpu:
            cells += [
                _fmt_ratio(r.get("x_reference")),
                _fmt_ms(r.get("floor")),
                "-" if r.get("x_floor") is None else f"{r['x_floor']:.2f}",
            ]
        elif roofline_columns:
            cells += [
                _fmt_rate(r.get("macs_per_s")),
                _fmt_rate(r.get("bytes_per_s")),
                _fmt_ms(r.get("floor")),
                _fmt_ratio(r.get("x_floor")),
            ]
        if r.get("error"):  # e.g. out of memory; no number in a time cell
            cells[2] = f"{r['name']} (failed: {r['error'].replace('|', '/')})"
        lines.append(report.table_row(cells))
    return lines


def _fmt_rate(v: float | None) -> str:
    """Giga-units per second: three significant figures (tiny test shapes stay non-zero)."""
    return "-" if v is None else f"{v / 1e9:.3g}"


def _layer_table(rows: list[dict]) -> list[str]:
    head = [
        "shape (N, C, HxW, K)",
        "memory format",
        "layer",
        "forward+backward median (ms)",
        "min (ms)",
        "peak extra memory (MiB)",
        "peak tensors (MiB)",
        "G multiply-adds/s",
        "roofline floor (ms)",
        "vs floor",
        "vs 3x3 conv",
        "vs 7x7 depthwise",
    ]
    lines = report.table_head(head)
    for r in rows:
        name = r["name"] if not r.get("error") else f"{r['name']} (failed: {r['error']})"
        cells = [
            r["shape"],
            r["format"],
            name.replace("|", "/"),
            _fmt_ms(r["median"]),
            _fmt_ms(r["min"]),
            _fmt_mib(r["peak"]),
            _fmt_mib(r.get("tensor_peak")),
            _fmt_rate(r.get("macs_per_s")),
            _fmt_ms(r.get("floor")),
            _fmt_ratio(r.get("x_floor")),
            _fmt_ratio(r.get("x_conv")),
            _fmt_ratio(r.get("x_depthwise")),
        ]
        lines.append(report.table_row(cells))
    return lines


OP_TARGET = 3.0  # the op's forward+backward within this factor of its roofline floor
LAYER_TARGET = 0.6  # an Involution2d at most this fraction of the 3x3 conv's time


def _why(row: dict, peaks: dict | None) -> str:
    """Where a row stands against each roof: its share of the matmul peak and of the copy
    bandwidth, and which of the two sets its floor."""
    if not peaks or not row.get("macs_per_s") or not row.get("bytes_per_s"):
        return ""
    compute = row["macs_per_s"] / peaks["macs_per_s"]
    traffic = row["bytes_per_s"] / peaks["bytes_per_s"]
    floor = (
        "compute"
        if row["macs"] / peaks["macs_per_s"] >= row["bytes"] / peaks["bytes_per_s"]
        else "traffic"
    )
    return (
        f": {compute:.0%} of the matmul peak, {traffic:.0%} of the copy bandwidth, the floor "
        f"set by {floor}"
    )


def _part_share(row: dict, part: str, peaks: dict) -> float:
    """One of the op's three kernels' share of the matmul peak (each does a third of the op's
    multiply-adds)."""
    return row["macs"] / len(PARTS) / row["parts"][part] / peaks["macs_per_s"]


def _parts_clause(row: dict, peaks: dict | None) -> str:
    """Where the step's time goes: its three ops (each's share of the matmul peak) and the rest
    of the step around them; empty for a row without its parts."""
    if not peaks or not row.get("parts") or not row.get("macs") or not row.get("median"):
        return ""
    times = " + ".join(f"{row['parts'][p] * 1e3:.2f}" for p in PARTS)
    shares = ", ".join(f"{_part_share(row, p, peaks):.0%}" for p in PARTS)
    rest = row["median"] - sum(row["parts"].values())
    return (
        f"; forward, grad_input, grad_kernel {times} ms ({shares} of the matmul peak), "
        f"{rest * 1e3:.2f} ms around them"
    )


def _parts_table(rows: list[dict], peaks: dict | None) -> list[str]:
    """The numba_cpu steps cut into their three ops: each op's median and share of the matmul
    peak, their sum against the floor, and the rest of the step."""
    found = [r for r in rows if peaks and r.get("parts") and r.get("macs") and r.get("floor")]
    if not found:
        return []
    head = [
        "shape (N, C, HxW, K, G)",
        "dtype",
        "backend",
        *(f"{p} (ms, share of the matmul peak)" for p in PARTS),
        "the three (ms)",
        "the three vs floor",
        "rest of the step (ms)",
        "step vs floor",
    ]
    lines = report.table_head(head)
    for r in found:
        three = sum(r["parts"].values())
        cells = [
            r["shape"],
            r["dtype"],
            r["name"],
            *(f"{_fmt_ms(r['parts'][p])} ({_part_share(r, p, peaks):.0%})" for p in PARTS),
            _fmt_ms(three),
            _fmt_ratio(three / r["floor"]),
            _fmt_ms(r["median"] - three),
            _fmt_ratio(r.get("x_floor")),
        ]
        lines.append(report.table_row(cells))
    return lines


def _summary(rows: list[dict], peaks: dict | None = None) -> list[str]:
    """One line per numba_cpu row: the ratio to its floor, the verdict and, where missed, why
    (``_why``)."""
    out = []
    for r in rows:
        if not r["name"].startswith("numba_cpu") or r.get("x_floor") is None:
            continue
        met = r["x_floor"] <= OP_TARGET
        verdict = "met" if met else "MISSED" + _why(r, peaks) + _parts_clause(r, peaks)
        out.append(
            f"- {r['shape']}, {r['name']}: {r['x_floor']:.2f}x the roofline floor ({verdict}); "
            f"{r['ratio']:.2f}x the depthwise conv"
        )
    return out


def _layer_summary(rows: list[dict]) -> list[str]:
    out = []
    by_shape: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_shape.setdefault((r["shape"], r["format"]), {})[r["name"]] = r
    for (shape, fmt), found in by_shape.items():
        layer = found.get("Involution2d")
        previous = found.get("Involution2d, unfused, recomputed (previous default)")
        if not layer or layer.get("x_conv") is None:
            continue
        parts = [
            f"{layer['x_conv']:.2f}x the 3x3 conv "
            f"({'met' if layer['x_conv'] <= LAYER_TARGET else 'MISSED'})"
        ]
        if previous and layer.get("tensor_peak") and previous.get("tensor_peak"):
            # judged on the step's tensors: the resident set of one layer's step moves by a
            # third between runs with where glibc's heap puts the blocks (shown beside it)
            ratio = layer["tensor_peak"] / previous["tensor_peak"]
            resident = (
                f"; resident set {layer['peak'] / previous['peak']:.2f}x"
                if layer.get("peak") and previous.get("peak")
                else ""
            )
            parts.append(
                f"peak tensors {ratio:.2f}x the previous default's "
                f"({'met' if ratio <= 1.0 else 'MISSED'}{resident})"
            )
        out.append(f"- {shape}, {fmt}: Involution2d " + ", ".join(parts))
    return out


def _gpu_summary(rows: list[dict]) -> list[str]:
    """The GPU targets per shape: numba_cuda at batch 64 in float32 and bfloat16."""
    out = []
    for r in rows:
        targeted = r["dtype"] in ("float32", "bfloat16") and r["shape"].startswith("64,")
        if r["name"] != "numba_cuda" or not targeted or r["median"] is None:
            continue
        checks = []
        if r.get("x_floor") is not None:
            ok = "ok" if r["x_floor"] <= 2 else "MISSED"
            checks.append(f"{r['x_floor']:.2f}x the bandwidth floor ({ok})")
        if r.get("x_reference"):
            speedup = 1 / r["x_reference"]
            ok = "ok" if speedup >= 5 else "MISSED"
            checks.append(f"{speedup:.1f}x faster than the reference ({ok})")
        if r.get("ratio") is not None:
            ok = "ok" if r["ratio"] <= 1.5 else "MISSED"
            checks.append(f"{r['ratio']:.2f}x the depthwise conv ({ok})")
        out.append(f"- {r['shape']}, {r['dtype']}: " + ", ".join(checks))
    return out


def write_section(path: Path, body: str, section: str = SECTION) -> None:
    """Replace (or append) this benchmark's section of ``path``, leaving the rest untouched."""
    sections.write_section(path, body, section)


def _runs(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``backend`` runs ``dtype`` on ``device`` (the op's own dispatch rules)."""
    from involution.ops import resolve_backend

    try:
        resolve_backend(backend, device, dtype)
    except (TypeError, ValueError):
        return False
    return True


def measure(
    args: argparse.Namespace, progress: Callable[[dict[str, Any], list[dict]], object] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the benchmark ``args`` describe: (the records' meta, one row per candidate and shape
    of the op table, one per candidate, shape and memory format of the layer table).
    ``progress(meta, rows)`` is called with the op rows so far after each shape and dtype, so that
    a time limit (``.ci/gpu-check``'s) keeps what was measured."""
    load_start = report.load_average()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shapes = args.shapes or REDNET50_SHAPES
    on_gpu = device.type == "cuda"
    batches = args.batches or ([8, 64] if on_gpu else [8, 32])
    dtypes = [getattr(torch, d) for d in (args.dtypes or (GPU_DTYPES if on_gpu else ["float32"]))]
    rows: list[dict] = []
    bandwidth = None
    heap = None
    if device.type == "cpu":
        heap = "glibc defaults"
        if args.heap == "steady":
            heap = (
                "steady: freed blocks stay on the heap (glibc M_MMAP_THRESHOLD 1 GiB, "
                "M_TRIM_THRESHOLD -1: no trimming), so no candidate re-faults fresh pages or "
                "pays for another's freed memory"
                if steady_heap()
                else "glibc defaults (mallopt unavailable)"
            )
    if on_gpu:
        bandwidth = copy_bandwidth(device)
        print(f"[bench-ops] device-to-device copy: {bandwidth / 1e9:.0f} GB/s", flush=True)
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
        numba_backend = "numba_cuda"
    else:
        sync = lambda: None  # noqa: E731
        numba_backend = "numba_cpu"
    found = None if on_gpu else roofline.peaks(device)
    if found is not None:
        print(
            f"[bench-ops] fp32 matmul {found.macs_per_s / 1e9:.1f} G multiply-adds/s, "
            f"copy {found.bytes_per_s / 1e9:.1f} GB/s",
            flush=True,
        )
    configs = [(batch, dtype) for batch in batches for dtype in dtypes]
    timed: list[tuple] = []  # CPU: (candidates, tensors, shape, dtype) awaiting their memory

    def meta() -> dict[str, Any]:
        return report.meta(
            GPU_NAME if on_gpu else NAME,
            report.command("involution.bench.ops", args.argv),
            device,
            device=device.type,
            gpu=_gpu_name(device) if on_gpu else None,
            load_start=load_start,
            load_end=report.load_average(),
            reps=args.reps,
            warmup=args.warmup,
            heap=heap,
            timing=None if on_gpu else PRIMED,
            bandwidth=bandwidth,
            cudnn=torch.backends.cudnn.version() if on_gpu else None,
            peaks=None
            if found is None
            else {"macs_per_s": found.macs_per_s, "bytes_per_s": found.bytes_per_s},
        )

    for channels, size, k in shapes:
        for batch, dtype in configs:
            backends = ["reference"] + [
                b for b in (numba_backend, "torch") if _runs(b, device, dtype)
            ]
            backends = [b for b in backends if args.backends is None or b in args.backends]
            compiled = [b for b in args.compiled if _runs(b, device, dtype)]
            cands, _tensors = _steps(batch, channels, size, k, device, dtype, backends, compiled)
            print(
                f"[bench-ops] N={batch} C={channels} {size}x{size} K={k} {dtype}: "
                f"{len(cands)} candidates",
                flush=True,
            )
            _interleaved(cands, args.reps, args.warmup, sync, primed=not on_gpu)
            shape = (batch, channels, size, k)
            if on_gpu:
                for cand in cands:
                    if cand.error is None:
                        cand.peak = cuda_peak_memory(cand.step, device)
                _report_shape(rows, cands, shape, dtype, bandwidth, on_gpu)
                if progress is not None:
                    progress(meta(), rows)
            else:  # CPU memory is measured after every timing (``_after_timings``)
                timed.append((cands, _tensors, shape, dtype))
            del cands, _tensors
    layers: list[dict[str, Any]] = []
    if not on_gpu:
        layer_sets = _time_layers(args, shapes, batches) if args.layers else []
        print("[bench-ops] peak memory, after every timing", flush=True)
        for cands, _tensors, shape, dtype in _after_timings(timed):
            _report_shape(rows, cands, shape, dtype, found, on_gpu)
            if progress is not None:
                progress(meta(), rows)
        for cands, _tensors, shape, groups_reduced in _after_timings(layer_sets, tensors=True):
            layers.extend(layer_rows(cands, shape, groups_reduced, found))
    return meta(), rows, layers


def _after_timings(sets: list[tuple], tensors: bool = False):
    """Each set of timed candidates (first item: the candidates) with their peak memory filled
    in, measured only once every candidate of every shape has been timed, each set released as
    soon as it is reported. ``peak_memory`` hands the heap's free pages back (``malloc_trim``),
    and a process never ran as fast after that: at 8x512x7x7 the numba_cpu NCHW forward took
    1.9 ms where it took 0.3 before, run after run (user time, no page faults, no system calls;
    every later shape's rows paid it). ``tensors``: the tensors' own peak too (the layer table)."""
    while sets:
        entry = sets.pop(0)
        for cand in entry[0]:
            if cand.error is None and cand.part_of is None:
                cand.peak = peak_memory(cand.step)
                if tensors:
                    cand.tensors = tensor_peak(cand.step)
        yield entry


def _report_shape(rows, cands, shape, dtype, limits, on_gpu) -> None:
    """The op table's rows of one shape and dtype into ``rows``, each printed."""
    batch, channels, size, k = shape
    print(f"[bench-ops] N={batch} C={channels} {size}x{size} K={k} {dtype}:", flush=True)
    for row in shape_rows(cands, shape, dtype, limits, with_reference=on_gpu):
        rows.append(row)
        ratio = row["ratio"] if row["ratio"] is None else round(row["ratio"], 2)
        print(
            f"  {row['name']:28s} median {_fmt_ms(row['median']):>9s} ms  "
            f"peak {_fmt_mib(row['peak']):>8s} MiB  x depthwise {ratio}"
            + (f"  x floor {row['x_floor']:.2f}" if row.get("x_floor") else ""),
            flush=True,
        )


def _time_layers(args, shapes, batches) -> list[tuple]:
    """The layer table's timings: every shape and batch in both memory formats (float32, CPU),
    as (candidates, their tensors, shape, (groups, reduced channels)) for ``_after_timings``."""
    sets = []
    for channels, size, k in shapes:
        for batch in batches:
            for memory_format in LAYER_FORMATS:
                cands, groups_reduced, _tensors = _layer_steps(
                    batch, channels, size, k, memory_format
                )
                print(
                    f"[bench-ops] layer N={batch} C={channels} {size}x{size} K={k} {memory_format}",
                    flush=True,
                )
                _interleaved(cands, args.reps, args.warmup, lambda: None, primed=True)
                for cand in cands:
                    if cand.error is None:
                        print(
                            f"  {cand.name:54s} median "
                            f"{_fmt_ms(statistics.median(cand.times)):>9s} ms",
                            flush=True,
                        )
                sets.append((cands, _tensors, (batch, channels, size, k), groups_reduced))
    return sets


def title(meta: dict[str, Any]) -> str:
    """The heading of the section of one set of records (the GPU's name on a GPU)."""
    gpu = meta.get("gpu")
    return "Operator: involution forward+backward vs depthwise convolution" + (
        f" ({gpu})" if gpu else ""
    )


def render(
    meta: dict[str, Any], rows: list[dict[str, Any]], layers: list[dict[str, Any]] | None = None
) -> str:
    """The markdown section of one set of records (as ``measure`` returns and JSON keeps)."""
    on_gpu = meta["device"] == "cuda"
    bandwidth = meta.get("bandwidth")
    found = meta.get("peaks")
    lines = [
        f"## {title(meta)}",
        "",
        f"Measured {meta['date']} with `{meta['command']}` (`make bench-ops`).",
        "",
        f"- Machine: {meta['machine']}",
        f"- Versions: {report.versions_line(meta['versions'])}",
        f"- Load average (1/5/15 min) at start: {meta['load_start']}; at end: "
        f"{meta['load_end']} (other jobs share this machine: compare within a shape, where all "
        "candidates ran interleaved)",
        "- Method: forward+backward (gradients of input and kernel; of input and weight for the "
        "conv), stride 1, padding K//2, G = C/16, random data; "
        f"{meta['reps']} interleaved repetitions after {meta['warmup']} warm-up runs, all "
        "candidates in one process; wall-clock median and minimum. Peak extra memory: what one "
        "step adds over the tensors it is given "
        + (
            "(`torch.cuda.max_memory_allocated`)."
            if on_gpu
            else "(peak resident set, reset via /proc/self/clear_refs, after freed memory is "
            "handed back with malloc_trim)."
        ),
    ]
    if meta.get("heap"):
        lines.append(f"- Heap: {meta['heap']}.")
    if meta.get("timing"):
        lines.append(f"- Timing: {meta['timing']}.")
    if bandwidth:
        lines.append(
            "- Bandwidth floor: the bytes forward+backward must move once (x, kernel map read and "
            "out written by forward; grad_out, x, kernel map read and grad_x, grad_kernel written "
            "by backward: 5 feature maps + 3 kernel maps) / the device-to-device copy bandwidth "
            f"measured in this run ({bandwidth / 1e9:.0f} GB/s, bytes read + written). "
            "Vs reference: time / the unfold reference's time at the same shape and dtype. The "
            "depthwise conv is torch's F.conv2d with groups=C (cuDNN "
            f"{meta.get('cudnn')} or torch's own depthwise kernel, as torch picks)."
        )
    if found:
        lines.append(
            "- Roofline, measured in this run: fp32 matmul "
            f"{found['macs_per_s'] / 1e9:.1f} G multiply-adds/s (2048 x 2048 x 2048, torch), copy "
            f"{found['bytes_per_s'] / 1e9:.1f} GB/s (256 MiB, bytes read + written), each the "
            "fastest of 11 runs (other jobs only slow a run down). Floor = the "
            "larger of multiply-adds / matmul peak and bytes / copy bandwidth. The op: 3 C K^2 "
            "multiply-adds per output pixel (forward, grad_input, kernel gradient); bytes: "
            "x, kernel map read and out written by forward, grad_out, x, kernel map read and "
            "grad_x, grad_kernel written by backward (5 feature maps + 3 kernel maps, "
            "`floor_bytes`)."
        )
    lines += ["", *_table(rows, on_gpu), ""]
    parts = _parts_table(rows, found)
    if parts:
        lines += [
            "Where the numba_cpu step's time goes: each of its three ops (`torch.ops.involution`"
            ".involution2d, involution2d_grad_input, involution2d_grad_kernel) timed alone on the "
            "same tensors without autograd, interleaved and primed like the candidates above "
            "(medians); each does a third of the op's multiply-adds. The rest of the step is "
            "the step's median minus the three: argument checks, the autograd graph and the "
            "dispatch around the kernels.",
            "",
            *parts,
            "",
        ]
    summary = _summary(rows, found)
    if summary:
        lines += [
            f"Target (numba_cpu forward+backward within {OP_TARGET:.0f}x of its roofline floor):",
            "",
            *summary,
            "",
        ]
    if layers:
        lines += [
            "### The layer against the convolutions it replaces",
            "",
            "Forward+backward of one spatial operator C -> C (gradients of the input and the "
            "parameters), in each memory format: `Involution2d` as `make_spatial_op` builds it "
            "(K as the op table, 16 channels per group, reduction 4: the fused op), the unfused "
            "layer (the kernel made by a batched product and kept for backward), the unfused layer "
            "recomputed in backward from its input (the previous default: the memory yardstick), "
            "the 3x3 convolution a ResNet has there and the 7x7 depthwise convolution. Layer "
            "floor: multiply-adds of the reduction C -> C/4 and the generation C/4 -> G K^2 (3 "
            "passes each) and of the aggregation (the op's), at the matmul peak; bytes: 5 "
            "C-channel and 4 C/4-channel maps (the kernel never in memory), at the copy "
            "bandwidth. The convolutions' multiply-adds per second count their own forward and "
            "two gradients. Peak tensors: the most bytes of tensor storage the step held at once "
            "(`tensor_peak`), what the memory target is judged on; the resident set beside it "
            "adds where glibc's heap put the blocks, which moves by up to a third between runs.",
            "",
            *_layer_table(layers),
            "",
        ]
        layer_summary = _layer_summary(layers)
        if layer_summary:
            lines += [
                f"Targets (Involution2d at most {LAYER_TARGET}x the 3x3 conv's time; peak tensors "
                "at most the previous default's):",
                "",
                *layer_summary,
                "",
            ]
    gpu_summary = _gpu_summary(rows)
    if gpu_summary:
        lines += [
            "Targets (numba_cuda forward+backward at batch 64 in float32 and bfloat16: within 2x "
            "of the bandwidth floor, at least 5x faster than the unfold reference, at most 1.5x "
            "the depthwise conv):",
            "",
            *gpu_summary,
            "",
        ]
    return "\n".join(lines)


def save(
    output: Path,
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    layers: list[dict[str, Any]] | None = None,
) -> Path:
    """Write the records beside ``output`` and render their section of ``output`` from them."""
    name = meta["benchmark"]
    payload = {"meta": meta, "rows": rows, **({"layers": layers} if layers else {})}
    path = report.write_records(report.records_path(output, name), payload)
    write_section(output, render(meta, rows, layers), SECTIONS[name])
    return path


def rerender(output: Path) -> list[Path]:
    """Rebuild every section of ``output`` whose records lie beside it; the records read."""
    found = []
    for name, section in SECTIONS.items():
        path = report.records_path(output, name)
        if path.is_file():
            records = report.read_records(path)
            layers = records.get("layers")
            write_section(output, render(records["meta"], records["rows"], layers), section)
            found.append(path)
    return found


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, int, int]:
    try:
        c, size, k = (int(v) for v in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CxSxK such as 64x56x7, got {text!r}") from None
    if c < 16 or c % 16 or size < 1 or k < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: C must be a positive multiple of 16 (G = C/16), S and K positive"
        )
    return c, size, k


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--shapes",
        nargs="*",
        type=_shape,
        help="CxSxK entries, e.g. 64x56x7, C a multiple of 16 (default: RedNet-50)",
    )
    parser.add_argument(
        "--batches",
        nargs="+",
        type=_positive,
        help="batch sizes (default: 8 32 on CPU, 8 64 on GPU)",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=DTYPES,
        help="storage dtypes (default: float32 on CPU; float32 float16 bfloat16 on GPU)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--compiled",
        nargs="*",
        choices=COMPILED,
        default=list(COMPILED),
        help="backends measured under torch.compile too (default: reference torch)",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=("reference", "numba_cpu", "numba_cuda", "torch"),
        help="the op's eager candidates (default: reference, the device's Numba backend and "
        "torch); the depthwise convolution is always measured",
    )
    parser.add_argument(
        "--no-compile",
        dest="compiled",
        action="store_const",
        const=[],
        help="no compiled candidate (the same as --compiled with no backend)",
    )
    parser.add_argument(
        "--no-layers",
        dest="layers",
        action="store_false",
        help="CPU: skip the layer table (Involution2d against the 3x3 and 7x7 depthwise convs)",
    )
    parser.add_argument(
        "--heap",
        choices=("steady", "default"),
        default="steady",
        help="CPU: keep freed blocks on the heap for every candidate ('steady', the default) or "
        "keep glibc's defaults, where each step re-faults its fresh pages ('default')",
    )
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rebuild the sections from the records beside --output "
        "(benchmarks.ops.json, benchmarks.ops.gpu.json)",
    )
    args = parser.parse_args(argv)
    if args.device not in (None, "cpu", "cuda"):
        parser.error(f"argument --device: must be cpu or cuda, got {args.device!r}")
    if args.render:
        try:
            rebuilt = rerender(args.output)
        except report.RecordsError as error:
            parser.error(f"argument --render: {error}")
        if not rebuilt:
            where = report.records_path(args.output, NAME)
            parser.error(f"argument --render: no records at {where} (nor the GPU's beside it)")
        print(f"[bench-ops] rebuilt {args.output} from {', '.join(map(str, rebuilt))}")
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda requested but torch sees no CUDA device")
    args.argv = argv
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta, rows, layers = measure(args, progress=lambda meta, rows: save(args.output, meta, rows))
    path = save(args.output, meta, rows, layers)
    print(f"[bench-ops] wrote {path} and {args.output}")


if __name__ == "__main__":
    main()
