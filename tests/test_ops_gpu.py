"""numba_cuda on a real GPU: the agreement, gradcheck and registration checks of test_ops.py, plus
half precision, autocast, torch.compile and stream ordering. Runs wherever CUDA is available
(``pytest -m gpu``); skipped elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from involution.layers import Involution2d
from involution.ops import involution2d

from helpers import (
    CASES,
    assert_half_precision,
    make_case,
    op_with_grads,
    spec_with_grads,
    tolerances,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")


def _on(device, *tensors):
    return [t.to(device) for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-k{c[5]}-s{c[6]}-d{c[7]}"
)
def test_agrees_with_spec(case, dtype):
    x, k, stride, padding, dilation = make_case(case, dtype)
    grad_out = torch.randn(
        *x.shape[:2], *k.shape[-2:], dtype=dtype, generator=torch.Generator().manual_seed(1)
    )
    want = spec_with_grads(x, k, stride, padding, dilation, grad_out)
    got = op_with_grads(
        *_on(CUDA, x, k), stride, padding, dilation, grad_out.to(CUDA), "numba_cuda"
    )
    tol = tolerances(dtype)
    for a, b in zip(got, want):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, **tol)


@pytest.mark.parametrize("layout", ["channels_last", "noncontiguous"])
def test_layouts(layout):
    x, k, stride, padding, dilation = make_case(CASES[6], torch.float64, layout)
    grad_out = torch.randn(*x.shape[:2], *k.shape[-2:], dtype=x.dtype)
    want = spec_with_grads(x, k, stride, padding, dilation, grad_out)
    got = op_with_grads(
        *_on(CUDA, x, k), stride, padding, dilation, grad_out.to(CUDA), "numba_cuda"
    )
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10)
    assert got[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    """Half storage, float32 accumulation: as close to the float64 spec as the storage allows."""
    assert_half_precision("numba_cuda", dtype, CUDA)


@pytest.mark.parametrize("case", [(1, 4, 2, 5, 6, (3, 3), 2, 1), (1, 8, 1, 4, 5, (3, 3), 1, 2)])
def test_gradcheck(case):
    x, k, stride, padding, dilation = make_case(case, torch.float64)
    x, k = (t.to(CUDA).requires_grad_() for t in (x, k))
    assert torch.autograd.gradcheck(
        lambda a, b: involution2d(a, b, stride, padding, dilation, "numba_cuda"), (x, k)
    )
    assert torch.autograd.gradgradcheck(
        lambda a, b: involution2d(a, b, stride, padding, dilation, "numba_cuda"), (x, k)
    )


def test_opcheck():
    x, k, stride, padding, dilation = make_case(CASES[3], torch.float32)
    x, k = (t.to(CUDA).requires_grad_() for t in (x, k))
    torch.library.opcheck(
        torch.ops.involution.involution2d.default,
        (x, k, list(stride), list(padding), list(dilation), "numba_cuda"),
    )


def test_auto_is_numba_cuda_and_runs_on_the_current_stream():
    x, k, stride, padding, dilation = make_case(CASES[6], torch.float32)
    x, k = _on(CUDA, x, k)
    expected = involution2d(x, k, stride, padding, dilation, "reference")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        big = torch.randn(4096, 4096, device=CUDA)  # queue work before ours on the side stream
        big = big @ big
        got = involution2d(x, k, stride, padding, dilation, "auto")
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        Involution2d(32, kernel_size=7, stride=2, group_channels=16),
        torch.nn.ReLU(),
        Involution2d(32, kernel_size=3, group_channels=16),
    ).to(CUDA)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast(dtype):
    model = _model()
    x = torch.randn(2, 3, 17, 15, device=CUDA)
    reference = model(x)
    with torch.autocast("cuda", dtype=dtype):
        out = model(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), reference, rtol=5e-2, atol=5e-2)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_torch_compile_fullgraph():
    model = _model()
    x = torch.randn(2, 3, 17, 15, device=CUDA)
    eager = model(x)
    torch._dynamo.reset()
    out = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)
    out.sum().backward()
