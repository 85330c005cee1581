"""The torch-free kernels in ``involution.kernels`` (the ``kernels/`` folder of the repository).

- CPU: both layouts of the three kernels against a NumPy transcription of the definition,
  called with NumPy arrays only; the layout policy; the package imports without torch; the
  blocked kernels (groups of 16 channels) bit for bit against their generic loops, in NCHW and
  NHWC operands, in one band or several, and the fused kernels against the blocked ones on the
  kernel made by a matrix product;
- CUDA: every kernel compiled for real to PTX (``numba.cuda.compile_ptx``, NVVM from the CUDA
  toolkit; no GPU needed) for compute capabilities 8.0 and 9.0 in every storage kind: any typing or
  lowering error fails here, which the simulator (pure Python) would not catch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from involution.kernels import cpu
from involution.kernels import cuda as cuda_kernels

from conftest import REPO


def numpy_forward(x, k, stride, padding, dilation):
    """out[n,c,i,j] = sum_uv k[n,g,u,v,i,j] * x[n,c,i*s-p+u*d, j*s-p+v*d] with explicit padding."""
    n, c, h, w = x.shape
    _, g, kh, kw, ho, wo = k.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.zeros((n, c, h + 2 * ph + kh * dh, w + 2 * pw + kw * dw), x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    out = np.zeros((n, c, ho, wo), x.dtype)
    kk = np.repeat(k, c // g, axis=1)  # [n, c, kh, kw, ho, wo]
    for u in range(kh):
        for v in range(kw):
            rows = xp[:, :, u * dh : u * dh + sh * ho : sh, v * dw : v * dw + sw * wo : sw]
            out += kk[:, :, u, v] * rows[:, :, :ho, :wo]
    return out


# (N, C, G, H, W, K, stride, dilation)
KERNEL_CASES = [
    (2, 16, 2, 7, 6, 3, 1, 1),
    (1, 12, 1, 9, 8, 5, 2, 2),
    (1, 4, 4, 6, 7, 7, 3, 1),
    (1, 6, 3, 9, 11, 5, 1, 2),  # stride 1, dilation 2: the flat-plane kernels
    (2, 4, 4, 4, 3, 7, 1, 1),  # image narrower than the kernel
    (1, 3, 1, 1, 1, 3, 1, 1),  # 1x1 image
    # wide enough for the NHWC interior blocks (4 pixels x 2 channel blocks):
    (1, 40, 2, 5, 13, 3, 1, 1),  # 20 channels per group: a block pair + 4 tail channels
    (2, 24, 1, 6, 17, 5, 2, 1),  # 3 blocks (a pair + the odd one), stride 2
    (1, 16, 2, 5, 14, 3, 1, 2),  # one block per group, dilation 2
]

# (layout, flat): the NCHW row kernels, the NCHW flat-plane kernels (stride 1 only), NHWC
PATHS = [("nchw", False), ("nchw", True), ("nhwc", False)]


PATH_CASES = [
    pytest.param(case, layout, flat, id="x".join(map(str, case)) + f"-{layout}{'-flat' * flat}")
    for case in KERNEL_CASES
    for layout, flat in PATHS
    if not flat or case[6] == 1  # flat: stride 1 only (the refusal is tested below)
]


@pytest.mark.parametrize(("case", "layout", "flat"), PATH_CASES)
def test_cpu_kernels_with_numpy(case, layout, flat):
    n, c, g, h, w, k, s, d = case
    p = d * (k - 1) // 2
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w))
    kern = rng.standard_normal((n, g, k, k, ho, wo))
    go = rng.standard_normal((n, c, ho, wo))
    args = ((s, s), (p, p), (d, d), layout, flat)
    to_layout = (
        (lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1)))
        if layout == "nhwc"
        else (lambda a: a)
    )
    from_layout = (lambda a: a.transpose(0, 3, 1, 2)) if layout == "nhwc" else (lambda a: a)

    out = to_layout(np.empty((n, c, ho, wo)))
    cpu.forward(to_layout(x), kern, out, *args)
    np.testing.assert_allclose(
        from_layout(out), numpy_forward(x, kern, (s, s), (p, p), (d, d)), atol=1e-12
    )

    # the adjoint identities <forward(x, k), go> = <x, grad_input(go, k)> = <k, grad_kernel(go, x)>
    gx = to_layout(np.empty_like(x))
    cpu.grad_input(to_layout(go), kern, gx, *args)
    gk = np.empty_like(kern)
    cpu.grad_kernel(to_layout(go), to_layout(x), gk, *args)
    inner = np.vdot(numpy_forward(x, kern, (s, s), (p, p), (d, d)), go)
    np.testing.assert_allclose(np.vdot(x, from_layout(gx)), inner, rtol=1e-10)
    np.testing.assert_allclose(np.vdot(kern, gk), inner, rtol=1e-10)


@pytest.mark.parametrize(
    ("channels", "groups", "width", "k", "stride", "dilation", "gather"),
    [(48, 2, 23, 5, 1, 1, False), (48, 2, 23, 5, 1, 1, True), (40, 1, 30, 7, 2, 2, False)],
    ids=["forward", "grad-input", "forward-stride2-dilation2-tail"],
)
def test_nhwc_interior_blocks_change_no_bit(channels, groups, width, k, stride, dilation, gather):
    """The interior's register blocks sum every pixel's taps in the generic loop's order: the
    result is bit for bit the one of the generic loop alone (lo = hi), in float32."""
    from involution.kernels.cpu.nhwc import interior, taps_nhwc
    from involution.kernels.cpu.tables import gather_table, tap_table

    p = dilation * (k - 1) // 2
    size = (width + stride - 1) // stride
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((2, groups, k, k, size, size)).astype(np.float32)
    if gather:  # grad_input: grad_out [N, Ho, Wo, C] -> [N, H, W, C]
        src = rng.standard_normal((2, size, size, channels)).astype(np.float32)
        rows = gather_table(width, k, stride, p, dilation, size)
        dst_w, step, offsets, src_w = width, 1, p - np.arange(k) * dilation, size
    else:
        src = rng.standard_normal((2, width, width, channels)).astype(np.float32)
        rows = tap_table(size, k, stride, p, dilation, width)
        dst_w, step, offsets, src_w = size, stride, np.arange(k) * dilation - p, width
    lo, hi = interior(step, offsets, src_w, dst_w)
    assert hi - lo >= 8  # the case reaches the blocks
    blocked, generic = (np.empty((2, dst_w, dst_w, channels), np.float32) for _ in range(2))
    taps_nhwc(src, kernel, blocked, rows, rows, gather, step, offsets, lo, hi)
    taps_nhwc(src, kernel, generic, rows, rows, gather, step, offsets, 0, 0)
    assert np.array_equal(blocked, generic)


# (N, C, G, H, W, K, stride, dilation, bands): groups of 16 channels and multiples
BLOCKED_CASES = [
    (2, 32, 2, 9, 11, 7, 1, 1, 1),  # K 7, odd x odd, two groups
    (1, 16, 1, 10, 13, 5, 2, 2, 3),  # stride 2, dilation 2, three bands of rows
    (2, 48, 1, 7, 6, 3, 3, 1, 2),  # three blocks in one group, stride 3, two bands
    (1, 16, 1, 5, 4, 7, 1, 2, 1),  # dilation 2 with padding wider than the image
    (1, 32, 2, 6, 19, 3, 1, 1, 4),  # rows of 19: 4-pixel tiles and a remainder, bands of 1-2
    (1, 16, 1, 5, 9, 3, 1, 1, 1),  # rows of 9: a remainder of one pixel (11, 13, 6: three, two)
    # grad_input's edge pixels in tiles of 4 channel blocks, across groups of two blocks
    (1, 96, 3, 6, 8, 7, 1, 1, 1),
    (1, 64, 4, 9, 7, 5, 2, 1, 2),  # ... and with stride 2: no column has all its taps inside
]


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", BLOCKED_CASES, ids=lambda c: "x".join(map(str, c)))
def test_blocked_kernels_equal_the_generic_loops(case, dtype, nhwc):
    """The register tiles add every term in the generic loops' order: the same bits, whatever
    the operands' layout and the bands the rows are split into; and the forward is the
    definition (NumPy transcription)."""
    from involution.kernels.cpu.generic import GENERIC

    n, c, g, h, w, k, s, d, bands = case
    p = d * (k - 1) // 2
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    kern = rng.standard_normal((n, g, k, k, ho, wo)).astype(dtype)
    go = rng.standard_normal((n, c, ho, wo)).astype(dtype)

    def layout(a):  # NHWC memory viewed as [N, C, H, W]
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) if nhwc else a

    args = ((s, s), (p, p), (d, d))
    for name, operands, shape in (
        ("forward", (layout(x), kern), (n, c, ho, wo)),
        ("grad_input", (layout(go), kern), x.shape),
        ("grad_kernel", (layout(go), layout(x)), kern.shape),
    ):
        blocked = np.full(shape, 7.0, dtype)  # stale values must be overwritten
        if name != "grad_kernel":
            blocked = layout(blocked)
        getattr(cpu, f"blocked_{name}")(*operands, blocked, *args, bands=bands)
        generic = np.empty(shape, dtype)
        GENERIC[name](*operands, generic, s, s, p, p, d, d)
        np.testing.assert_array_equal(blocked, generic, err_msg=name)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    forward = np.empty((n, c, ho, wo), dtype)
    GENERIC["forward"](x, kern, forward, s, s, p, p, d, d)
    np.testing.assert_allclose(forward, numpy_forward(x, kern, *args), rtol=tol, atol=tol)


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", BLOCKED_CASES[:3], ids=lambda c: "x".join(map(str, c)))
def test_fused_kernels_equal_the_blocked_kernels_on_the_made_kernel(case, nhwc):
    """fused_forward / fused_backward (float64) against the blocked kernels applied to the kernel
    made by a matrix product, and the hidden map's and weights' gradients by NumPy products."""
    n, c, g, h, w, k, s, d, bands = case
    r = 5  # hidden channels (padded to a vector inside)
    p = d * (k - 1) // 2
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w))
    hidden = rng.standard_normal((n, r, ho, wo))
    weight = rng.standard_normal((g * k * k, r))
    bias = rng.standard_normal(g * k * k)
    go = rng.standard_normal((n, c, ho, wo))

    def layout(a):
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) if nhwc else a

    args = ((s, s), (p, p), (d, d))
    kern = (np.einsum("tr,nrij->ntij", weight, hidden) + bias[:, None, None]).reshape(
        n, g, k, k, ho, wo
    )
    out = layout(np.empty((n, c, ho, wo)))
    cpu.fused_forward(layout(x), layout(hidden), weight, bias, out, (k, k), *args, bands=bands)
    want = cpu.blocked_forward(x, kern, np.empty((n, c, ho, wo)), *args)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    gx, gh = layout(np.empty(x.shape)), layout(np.empty(hidden.shape))
    gw, gb = cpu.fused_backward(
        layout(go), layout(x), layout(hidden), weight, bias, gx, gh, (k, k), *args, bands=bands
    )
    np.testing.assert_allclose(gx, cpu.blocked_grad_input(go, kern, np.empty(x.shape), *args))
    gk = cpu.blocked_grad_kernel(go, x, np.empty(kern.shape), *args).reshape(n, -1, ho, wo)
    np.testing.assert_allclose(gh, np.einsum("tr,ntij->nrij", weight, gk), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, np.einsum("ntij,nrij->tr", gk, hidden), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gb, gk.sum((0, 2, 3)), rtol=1e-12, atol=1e-12)


def test_layout_policy():
    assert cpu.nhwc_is_faster(16, 49) and cpu.nhwc_is_faster(8, 25)
    assert not cpu.nhwc_is_faster(4, 49) and not cpu.nhwc_is_faster(16, 9)
    # the kernel gradient stays NCHW (flat) at stride 1 on wide maps, NHWC on narrow ones
    assert not cpu.grad_kernel_nhwc_is_faster(16, 49, (1, 1), 56, 56)
    assert cpu.grad_kernel_nhwc_is_faster(16, 49, (1, 1), 14, 14)
    assert cpu.grad_kernel_nhwc_is_faster(16, 49, (2, 2), 56, 28)
    assert not cpu.grad_kernel_nhwc_is_faster(4, 49, (1, 1), 14, 14)
    # 3x3 (the RedNet stem): NCHW from NCHW operands, NHWC from NHWC ones (no transposes)
    assert not cpu.grad_kernel_nhwc_is_faster(16, 9, (1, 1), 112, 112)
    assert cpu.grad_kernel_nhwc_is_faster(16, 9, (1, 1), 112, 112, operands_nhwc=True)
    assert not cpu.grad_kernel_nhwc_is_faster(4, 9, (1, 1), 112, 112, operands_nhwc=True)
    # 7x7 on a wide map: the flat NCHW kernel even from NHWC operands
    assert not cpu.grad_kernel_nhwc_is_faster(16, 49, (1, 1), 56, 56, operands_nhwc=True)


# (N, C, G, H, W, K, dilation, row padding): stride 1, column padding dilation*(K-1)//2 (so the
# output is as wide as the input), row padding free (so Ho may differ from H)
FLAT_CASES = [
    (2, 16, 2, 7, 6, 3, 1, 1),
    (1, 4, 4, 5, 5, 3, 2, 2),
    (1, 6, 3, 9, 11, 5, 1, 2),
    (1, 6, 1, 4, 3, 7, 1, 3),
    (1, 8, 2, 6, 2, 5, 2, 4),
    (1, 4, 2, 7, 9, 3, 1, 0),
    (1, 4, 2, 7, 9, 3, 1, 3),
    (1, 2, 1, 1, 1, 3, 1, 1),
    (2, 3, 1, 8, 13, 1, 1, 0),
    (1, 4, 2, 10, 10, 7, 2, 6),
    (1, 4, 2, 6, 7, 2, 2, 1),  # even K: dilation 2 still keeps the width
]


@pytest.mark.parametrize("case", FLAT_CASES, ids=lambda c: "x".join(map(str, c)))
def test_flat_kernels_equal_the_row_kernels(case):
    """Bit for bit (same sums in the same order), with an Inf in a corner: the edge columns the
    flat loops save and restore must not let it leak into the neighbouring row."""
    n, c, g, h, w, k, d, ph = case
    pw = d * (k - 1) // 2
    ho = h + 2 * ph - d * (k - 1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w))
    x[0, 0, 0, 0] = np.inf
    x[-1, -1, -1, -1] = -np.inf
    kern = rng.standard_normal((n, g, k, k, ho, w))
    go = rng.standard_normal((n, c, ho, w))
    args = ((1, 1), (ph, pw), (d, d), "nchw")
    for fn, operands, shape in (
        (cpu.forward, (x, kern), (n, c, ho, w)),
        (cpu.grad_input, (go, kern), x.shape),
        (cpu.grad_kernel, (go, x), kern.shape),
    ):
        rows, flat = np.full(shape, 7.0), np.full(shape, -3.0)  # stale values must be overwritten
        fn(*operands, rows, *args, False)
        fn(*operands, flat, *args, True)
        np.testing.assert_array_equal(flat, rows, err_msg=fn.__name__)


def test_flat_refuses_what_it_cannot_do():
    x = np.zeros((1, 2, 8, 8))
    kern = np.zeros((1, 1, 3, 3, 4, 4))
    with pytest.raises(ValueError, match="flat=True needs .* stride"):
        cpu.forward(x, kern, np.empty((1, 2, 4, 4)), (2, 2), (1, 1), (1, 1), "nchw", True)


@pytest.mark.parametrize("kind", cuda_kernels.KINDS)
def test_cuda_kernels_compile_to_ptx(kind):
    from numba import cuda

    sigs = cuda_kernels.signatures(kind)
    for name, fn in cuda_kernels.python_functions(kind).items():
        for cc in ((8, 0), (9, 0)):
            ptx, _ = cuda.compile_ptx(fn, sigs[name], cc=cc)
            assert f".target sm_{cc[0]}{cc[1]}" in ptx, (kind, name, cc)
            assert ".entry" in ptx and ".local" not in ptx, (
                f"{kind} {name}: accumulators spilled to local memory"
            )


def test_cuda_source_expansion():
    """LOAD/STORE are expanded for every kind (none left for the compiler to trip over)."""
    for kind in cuda_kernels.KINDS:
        source = cuda_kernels.kernel_source(kind)
        assert "LOAD(" not in source and "STORE(" not in source
    assert "float16(value)" in cuda_kernels.kernel_source("float16")
    assert "int_as_float" in cuda_kernels.kernel_source("bfloat16")


def test_kernels_import_without_torch():
    code = (
        "import sys, involution.kernels.cpu, involution.kernels.cuda; "
        "bad = [m for m in ('torch',) if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


SCRATCH_STRESS = """
import numpy as np
from involution.kernels import cpu

rng = np.random.default_rng(0)
n, c, g, h, w, k, r = 4, 32, 2, 13, 13, 7, 8
args = ((1, 1), (3, 3), (1, 1))
x, go = rng.standard_normal((2, n, c, h, w))
hid = rng.standard_normal((n, r, h, w))
wt, b = rng.standard_normal((g * k * k, r)), rng.standard_normal(g * k * k)
kern = rng.standard_normal((n, g, k, k, h, w))


def run():
    out = [
        cpu.blocked_forward(x, kern, np.empty_like(x), *args, bands=3),
        cpu.blocked_grad_input(go, kern, np.empty_like(x), *args, bands=3),
        cpu.blocked_grad_kernel(go, x, np.empty_like(kern), *args, bands=3),
    ]
    fo = np.empty_like(x)
    cpu.fused_forward(x, hid, wt, b, fo, (k, k), *args, bands=3)
    gx, gh = np.empty_like(x), np.empty_like(hid)
    gw, gb = cpu.fused_backward(go, x, hid, wt, b, gx, gh, (k, k), *args, bands=3)
    return out + [fo, gx, gh, gw, gb]


first = run()
for it in range(50):
    for got, want in zip(run(), first):
        assert np.array_equal(got, want), f"iteration {it}: a result changed"
"""


def test_scratch_rows_live_while_the_threads_use_them():
    """The blocked and fused kernels reach their scratch rows through raw pointers, which do not
    keep an array alive: without ``simd.keep_alive`` Numba freed the rows right after taking
    their pointers, and on two threads sharing one malloc arena one thread's rows were handed
    to the other's (results changed from call to call, or glibc aborted on a corrupted heap:
    every time on this workload). Run in a process of its own, two Numba threads, one arena."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "MALLOC_ARENA_MAX": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRATCH_STRESS], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_cache_is_emptied_when_any_kernel_source_changes(tmp_path):
    """Numba re-keys a cached kernel on its own file only; ``cache.refresh`` empties the cache of
    every kernel where the digest of all the sources changed (a helper in ``tiles`` compiled
    into ``blocked``'s kernels, say), once per change; the package did it on import."""
    from types import SimpleNamespace

    from involution.kernels.cpu import cache

    flushed = []
    fake = SimpleNamespace(cache_path=str(tmp_path / "cache"), flush=lambda: flushed.append(1))
    kernel = SimpleNamespace(_cache=fake)
    assert cache.refresh([kernel], "one") == [fake.cache_path] and len(flushed) == 1
    assert (tmp_path / "cache" / cache.STAMP).read_text() == "one"
    assert cache.refresh([kernel], "one") == [] and len(flushed) == 1
    assert cache.refresh([kernel], "two") == [fake.cache_path] and len(flushed) == 2

    modules = [m for name, m in sys.modules.items() if name.startswith("involution.kernels.cpu.")]
    real = cache.cached_dispatchers(modules)
    assert cpu.blocked_forward and any(d.py_func.__name__ == "forward_blocked" for d in real)
    for folder in {d._cache.cache_path for d in real}:
        assert (Path(folder) / cache.STAMP).read_text() == cache.sources_digest()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_register_transpose_and_masked_store(dtype):
    """``simd.transpose_block`` is a LANES x LANES transpose between any offsets and pitches
    (the NCHW / NHWC rows in and out of the blocked kernels), and ``simd.store_first`` writes
    exactly its first ``count`` elements (a kernel-gradient row's tail): nothing around them."""
    from numba import njit

    from involution.kernels.cpu.simd import LANES, keep_alive, pointer, store_first, transpose_block

    @njit
    def transpose(dst, dat, dpitch, src, sat, spitch):
        transpose_block(pointer(dst), dat, dpitch, pointer(src), sat, spitch)
        keep_alive((dst, src))

    @njit
    def store(dst, at, src, count):
        store_first(pointer(dst), at, pointer(src), 0, count)
        keep_alive((dst, src))

    rng = np.random.default_rng(0)
    src = rng.standard_normal(LANES * 23 + 9).astype(dtype)
    dst = np.full(LANES * 19 + 11, -1.0, dtype)
    transpose(dst, 3, 19, src, 5, 23)
    block = src[5 : 5 + LANES * 23].reshape(LANES, 23)[:, :LANES]
    written = np.zeros(dst.shape, bool)
    for k in range(LANES):
        assert np.array_equal(dst[3 + k * 19 : 3 + k * 19 + LANES], block[:, k])
        written[3 + k * 19 : 3 + k * 19 + LANES] = True
    assert np.all(dst[~written] == -1.0)

    for count in (1, 7, LANES - 1):
        out = np.full(2 * LANES, -1.0, dtype)
        store(out, 4, src, count)
        assert np.array_equal(out[4 : 4 + count], src[:count])
        assert np.all(out[:4] == -1.0) and np.all(out[4 + count :] == -1.0)
