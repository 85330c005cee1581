"""The torch-free kernels in ``involution.kernels`` (the ``kernels/`` folder of the repository).

- CPU: both layouts of the three kernels against a NumPy transcription of the definition,
  called with NumPy arrays only;
- CUDA: every kernel compiled for real to PTX (``numba.cuda.compile_ptx``, NVVM from the CUDA
  toolkit; no GPU needed) for compute capabilities 8.0 and 9.0 in every storage kind: any typing or
  lowering error fails here, which the simulator (pure Python) would not catch.
"""

from __future__ import annotations

import numpy as np
import pytest

from involution.kernels import cpu
from involution.kernels import cuda as cuda_kernels


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
]


@pytest.mark.parametrize("layout", cpu.LAYOUTS)
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "x".join(map(str, c)))
def test_cpu_kernels_with_numpy(case, layout):
    n, c, g, h, w, k, s, d = case
    p = d * (k - 1) // 2
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w))
    kern = rng.standard_normal((n, g, k, k, ho, wo))
    go = rng.standard_normal((n, c, ho, wo))
    args = ((s, s), (p, p), (d, d), layout)
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


def test_layout_policy():
    assert cpu.nhwc_is_faster(16, 49) and cpu.nhwc_is_faster(8, 25)
    assert not cpu.nhwc_is_faster(4, 49) and not cpu.nhwc_is_faster(16, 9)


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
