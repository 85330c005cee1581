"""Involution on NVIDIA GPUs: forward, grad_input and grad_kernel as numba-cuda kernels.

Torch-free: the kernels take device arrays (anything with ``__cuda_array_interface__``, e.g. a
torch tensor through ``numba.cuda.as_cuda_array``) and write a preallocated output. Every operand
is passed flattened (1-D, C-contiguous) with its sizes as integers, so one compiled kernel serves
every shape and the index arithmetic is explicit 64-bit.

Storage kinds (what the arrays hold -> what the sums accumulate in)::

    "float64"  float64 arrays                          -> float64
    "float32"  float32 arrays                          -> float32
    "float16"  float16 arrays                          -> float32
    "bfloat16" int16 arrays holding bfloat16 bit patterns -> float32
               (bfloat16 has no typestr in the CUDA array interface; the caller passes
               ``tensor.view(torch.int16)``; loads widen the bits exactly, stores round to nearest
               even through libdevice's float<->int bit casts)

Work split (one thread per output element, consecutive threads along the output row, so loads of
the kernel map, the input and the output are coalesced):

- ``forward``: a thread owns pixel (i, j) of ``CHANNEL_BLOCK`` consecutive channels of one group
  and accumulates them in registers, so each kernel value is loaded once per block, not per channel.
- ``grad_input``: the same shape of work on the input grid, as a gather: input pixel (y, x) sums
  the taps (u, v) whose output pixel i = (y + ph - u*dh) / sh, j = (x + pw - v*dw) / sw is whole
  and in range. No atomics.
- ``grad_kernel``: a thread owns one kernel element (n, g, u, v, i, j) and sums the group's
  channels.

Launch with ``launch_config(total)`` on the caller's stream: ``kernel[grid, block, stream](...)``.
The simulator (``NUMBA_ENABLE_CUDASIM=1``) runs the same Python code for the float kinds.
"""

from __future__ import annotations

import linecache
import re

from numba import cuda
from numba.cuda import types
from numba.cuda.types import float16, float32, float64, int16, int32, int64

__all__ = [
    "CHANNEL_BLOCK",
    "KINDS",
    "THREADS_PER_BLOCK",
    "launch_config",
    "get_kernels",
    "python_functions",
    "kernel_source",
    "signatures",
    "work_items",
]

CHANNEL_BLOCK = 8  # channels per thread in forward / grad_input (registers, unrolled)
THREADS_PER_BLOCK = 256
KINDS = ("float32", "float16", "bfloat16", "float64")


# ------------------------------------------------------------------------------------------------
# The kernels, written once and specialised per storage kind
#
# numba-cuda compiles every called device function for the *current device*, so a kernel calling
# helper functions cannot be compiled to PTX on a machine without a GPU. The loads and stores that
# differ between storage kinds are therefore written as ``LOAD(array, index)`` and
# ``STORE(array, index, value)`` (plain names only) and expanded in the source below, per kind,
# into inline expressions (casts and libdevice bit casts, which are intrinsics).
# ------------------------------------------------------------------------------------------------

_SOURCE = """
def forward(x, k, out, n_, c_, h_, w_, g_, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw):
    # out[n,c,i,j] = sum_uv k[n,g,u,v,i,j] * x[n,c,i*sh-ph+u*dh, j*sw-pw+v*dw]
    idx = int64(cuda.grid(1))
    cpg = c_ // g_
    nblk = (cpg + CB - 1) // CB
    if idx >= n_ * g_ * nblk * ho * wo:
        return
    j = idx % wo
    t = idx // wo
    i = t % ho
    t = t // ho
    blk = t % nblk
    t = t // nblk
    g = t % g_
    n = t // g_
    c0 = g * cpg + blk * CB
    cend = (g + 1) * cpg
    acc = cuda.local.array(CB, ACC)
    for q in range(CB):
        acc[q] = 0
    plane = ho * wo
    kbase = (n * g_ + g) * kh * kw * plane + i * wo + j
    xplane = h_ * w_
    xbase = (n * c_ + c0) * xplane
    for u in range(kh):
        ih = i * sh - ph + u * dh
        if ih < 0 or ih >= h_:
            continue
        for v in range(kw):
            jw = j * sw - pw + v * dw
            if jw < 0 or jw >= w_:
                continue
            koff = kbase + (u * kw + v) * plane
            kv = ACC(LOAD(k, koff))
            xo = xbase + ih * w_ + jw
            for q in range(CB):
                if c0 + q < cend:
                    xoff = xo + q * xplane
                    acc[q] += kv * ACC(LOAD(x, xoff))
    for q in range(CB):
        if c0 + q < cend:
            ooff = ((n * c_ + c0 + q) * ho + i) * wo + j
            value = acc[q]
            STORE(out, ooff, value)


def grad_input(go, k, gx, n_, c_, h_, w_, g_, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw):
    # gx[n,c,y,x] = sum over the taps (u,v) that read (y,x) of k[n,g,u,v,i,j] * go[n,c,i,j]
    idx = int64(cuda.grid(1))
    cpg = c_ // g_
    nblk = (cpg + CB - 1) // CB
    if idx >= n_ * g_ * nblk * h_ * w_:
        return
    xc = idx % w_
    t = idx // w_
    y = t % h_
    t = t // h_
    blk = t % nblk
    t = t // nblk
    g = t % g_
    n = t // g_
    c0 = g * cpg + blk * CB
    cend = (g + 1) * cpg
    acc = cuda.local.array(CB, ACC)
    for q in range(CB):
        acc[q] = 0
    plane = ho * wo
    kbase = (n * g_ + g) * kh * kw * plane
    gbase = (n * c_ + c0) * plane
    for u in range(kh):
        num = y + ph - u * dh
        if num < 0 or num % sh != 0:
            continue
        i = num // sh
        if i >= ho:
            continue
        for v in range(kw):
            numw = xc + pw - v * dw
            if numw < 0 or numw % sw != 0:
                continue
            j = numw // sw
            if j >= wo:
                continue
            koff = kbase + (u * kw + v) * plane + i * wo + j
            kv = ACC(LOAD(k, koff))
            go_off = gbase + i * wo + j
            for q in range(CB):
                if c0 + q < cend:
                    goff = go_off + q * plane
                    acc[q] += kv * ACC(LOAD(go, goff))
    for q in range(CB):
        if c0 + q < cend:
            xoff = ((n * c_ + c0 + q) * h_ + y) * w_ + xc
            value = acc[q]
            STORE(gx, xoff, value)


def grad_kernel(go, x, gk, n_, c_, h_, w_, g_, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw):
    # gk[n,g,u,v,i,j] = sum_{c in g} go[n,c,i,j] * x[n,c,i*sh-ph+u*dh, j*sw-pw+v*dw]
    idx = int64(cuda.grid(1))
    if idx >= n_ * g_ * kh * kw * ho * wo:
        return
    j = idx % wo
    t = idx // wo
    i = t % ho
    t = t // ho
    v = t % kw
    t = t // kw
    u = t % kh
    t = t // kh
    g = t % g_
    n = t // g_
    cpg = c_ // g_
    acc = ACC(0)
    ih = i * sh - ph + u * dh
    jw = j * sw - pw + v * dw
    if ih >= 0 and ih < h_ and jw >= 0 and jw < w_:
        plane = ho * wo
        xplane = h_ * w_
        c0 = n * c_ + g * cpg
        go_base = c0 * plane + i * wo + j
        x_base = c0 * xplane + ih * w_ + jw
        for q in range(cpg):
            goff = go_base + q * plane
            xoff = x_base + q * xplane
            acc += ACC(LOAD(go, goff)) * ACC(LOAD(x, xoff))
    STORE(gk, idx, acc)
"""

# LOAD(a, i) -> expression; STORE(a, i, v) -> statement lines (same indentation)
_LOADS = {
    "native": "{a}[{i}]",
    "float16": "float32({a}[{i}])",
    # bfloat16 -> float32 is exact: the 16 bits are the top half of the float32
    "bfloat16": "libdevice.int_as_float(int32((int32({a}[{i}]) & 0xFFFF) << 16))",
}
_STORES = {
    "native": ["{a}[{i}] = {v}"],
    "float16": ["{a}[{i}] = float16({v})"],
    # float32 -> bfloat16: round to nearest, ties to even; NaN stays a quiet NaN
    "bfloat16": [
        "_bits = int64(libdevice.float_as_int({v})) & 0xFFFFFFFF",
        "_half = ((_bits + 0x7FFF + ((_bits >> 16) & 1)) >> 16) & 0xFFFF",
        "if {v} != {v}:",
        "    _half = 0x7FC0",
        "{a}[{i}] = int16(_half)",
    ],
}
_KIND_SPEC = {  # kind -> (load/store flavour, accumulator type)
    "float64": ("native", float64),
    "float32": ("native", float32),
    "float16": ("float16", float32),
    "bfloat16": ("bfloat16", float32),
}
_LOAD_RE = re.compile(r"LOAD\((\w+), (\w+)\)")
_STORE_RE = re.compile(r"^(\s*)STORE\((\w+), (\w+), (\w+)\)$")


def kernel_source(kind: str) -> str:
    """The Python source of the three kernels for a storage kind (LOAD/STORE expanded)."""
    if kind not in _KIND_SPEC:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    flavour = _KIND_SPEC[kind][0]
    lines = []
    for line in _SOURCE.splitlines():
        store = _STORE_RE.match(line)
        if store:
            indent, a, i, v = store.groups()
            lines += [indent + part.format(a=a, i=i, v=v) for part in _STORES[flavour]]
        else:
            lines.append(_LOAD_RE.sub(lambda m: _LOADS[flavour].format(a=m[1], i=m[2]), line))
    return "\n".join(lines) + "\n"


def _build(kind: str) -> dict:
    source = kernel_source(kind)
    filename = f"<involution.kernels.cuda:{kind}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {
        "cuda": cuda,
        "libdevice": _libdevice(),
        "int16": int16,
        "int32": int32,
        "int64": int64,
        "float16": float16,
        "float32": float32,
        "ACC": _KIND_SPEC[kind][1],
        "CB": CHANNEL_BLOCK,
    }
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own template
    return {name: namespace[name] for name in ("forward", "grad_input", "grad_kernel")}


def _libdevice():
    try:
        from numba.cuda import libdevice
    except ImportError:  # pragma: no cover - only bfloat16 uses it
        return None
    return libdevice


_PYFUNCS: dict[str, dict] = {}
_KERNELS: dict[str, dict] = {}


def python_functions(kind: str) -> dict:
    """The undecorated kernel functions of a storage kind (for ``numba.cuda.compile_ptx``)."""
    if kind not in _PYFUNCS:
        _PYFUNCS[kind] = _build(kind)
    return _PYFUNCS[kind]


def get_kernels(kind: str) -> dict:
    """``{"forward", "grad_input", "grad_kernel"}`` -> ``numba.cuda.jit`` kernels for ``kind``."""
    if kind not in _KERNELS:
        _KERNELS[kind] = {name: cuda.jit(fn) for name, fn in python_functions(kind).items()}
    return _KERNELS[kind]


_ARRAY_DTYPES = {"float64": float64, "float32": float32, "float16": float16, "bfloat16": int16}


def signatures(kind: str) -> dict:
    """Explicit signatures of the three kernels for ``kind`` (1-D C arrays + 15 int64 sizes)."""
    arr = types.Array(_ARRAY_DTYPES[kind], 1, "C")
    sig = (arr, arr, arr) + (int64,) * 15
    return {name: sig for name in ("forward", "grad_input", "grad_kernel")}


def work_items(
    name: str, n: int, c: int, h: int, w: int, g: int, kh: int, kw: int, ho: int, wo: int
) -> int:
    """How many threads kernel ``name`` needs for these sizes."""
    blocks = (c // g + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    if name == "forward":
        return n * g * blocks * ho * wo
    if name == "grad_input":
        return n * g * blocks * h * w
    if name == "grad_kernel":
        return n * g * kh * kw * ho * wo
    raise ValueError(f"name must be forward, grad_input or grad_kernel, got {name!r}")


def launch_config(total: int) -> tuple[int, int]:
    """(blocks, threads per block) covering ``total`` threads, one per work item."""
    threads = min(THREADS_PER_BLOCK, max(32, (total + 31) // 32 * 32))  # small jobs: small blocks
    return max(1, (total + threads - 1) // threads), threads
