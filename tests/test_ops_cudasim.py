"""numba_cuda under Numba's CUDA simulator, on small shapes.

The simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba.cuda is first imported,
so these tests run in their own process: ``tests/test_ops.py::test_cuda_simulator_suite`` starts
``python -m pytest tests/test_ops_cudasim.py`` with the variable set. In the main test process
they are skipped. The simulator runs the kernels' Python (threads, blocks, index arithmetic, the
float16 loads/stores) on CPU tensors; the compiled code is covered by compile_ptx in
tests/test_kernels.py and by tests/test_ops_gpu.py on a real GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from involution.ops import involution2d

from helpers import make_case, op_with_grads, spec_with_grads

pytestmark = pytest.mark.skipif(
    os.environ.get("NUMBA_ENABLE_CUDASIM") != "1",
    reason="runs in a NUMBA_ENABLE_CUDASIM=1 subprocess (test_ops.py::test_cuda_simulator_suite)",
)

# (N, C, G, H, W, (KH, KW), stride, dilation): tiny, the simulator runs every thread in Python
SIM_CASES = [
    (1, 2, 1, 5, 4, (3, 3), 1, 1),  # odd x even, one group, batch 1
    (2, 3, 3, 4, 5, (3, 3), 2, 2),  # G = C, stride 2, dilation 2
    (1, 5, 1, 7, 6, (5, 5), 3, 1),  # K 5, stride 3, 5 channels per group: a partial channel block
    (1, 4, 2, 3, 3, (1, 1), 1, 1),  # K 1
    (1, 2, 2, 7, 7, (7, 7), 1, 1),  # K 7
]


def test_simulator_is_active():
    from numba.cuda.core import config

    from involution.ops import _numba_cuda

    assert config.ENABLE_CUDASIM and _numba_cuda.simulator_enabled()


@pytest.mark.parametrize(
    "case", SIM_CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-k{c[5][0]}-s{c[6]}-d{c[7]}"
)
def test_agrees_with_spec(case):
    x, k, stride, padding, dilation = make_case(case, torch.float64, seed=3)
    grad_out = torch.randn(
        *x.shape[:2], *k.shape[-2:], dtype=x.dtype, generator=torch.Generator().manual_seed(4)
    )
    want = spec_with_grads(x, k, stride, padding, dilation, grad_out)
    got = op_with_grads(x, k, stride, padding, dilation, grad_out, "numba_cuda")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", ["channels_last", "noncontiguous"])
def test_layouts(layout):
    x, k, stride, padding, dilation = make_case(SIM_CASES[1], torch.float64, layout, seed=5)
    grad_out = torch.randn(*x.shape[:2], *k.shape[-2:], dtype=x.dtype)
    want = spec_with_grads(x, k, stride, padding, dilation, grad_out)
    got = op_with_grads(x, k, stride, padding, dilation, grad_out, "numba_cuda")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert got[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_precision(dtype):
    """float16 storage with float32 accumulation: within float16 rounding of the float64 spec."""
    x, k, stride, padding, dilation = make_case(SIM_CASES[2], torch.float64, seed=6)
    grad_out = torch.randn(*x.shape[:2], *k.shape[-2:], dtype=x.dtype)
    want = spec_with_grads(
        x.to(dtype).double(),
        k.to(dtype).double(),
        stride,
        padding,
        dilation,
        grad_out.to(dtype).double(),
    )
    got = op_with_grads(
        x.to(dtype), k.to(dtype), stride, padding, dilation, grad_out.to(dtype), "numba_cuda"
    )
    tol = {"rtol": 1e-2, "atol": 2e-2} if dtype == torch.float16 else {"rtol": 1e-5, "atol": 1e-5}
    for a, b in zip(got, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, **tol)


@pytest.mark.parametrize(
    ("case", "fast_mode"),
    [((1, 2, 1, 4, 3, (3, 3), 1, 1), False), ((1, 2, 2, 5, 4, (3, 3), 2, 2), True)],
    ids=["G1-s1-full", "GC-s2-d2-fast"],
)
def test_gradcheck(case, fast_mode):
    """Full gradcheck on the smallest case; fast mode (Jacobians along random directions) on the
    strided/dilated one, where the full check needs hundreds of simulated launches."""
    x, k, stride, padding, dilation = make_case(case, torch.float64, seed=7)
    x.requires_grad_()
    k.requires_grad_()
    fn = lambda a, b: involution2d(a, b, stride, padding, dilation, "numba_cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, k), fast_mode=fast_mode)
