"""The involution op (``involution.ops.involution2d``) against its spec, on the CPU backends.

- every backend agrees with autograd through the unfold spec (``involution2d_reference``) over
  odd/even sizes, strides 1/2/3, dilations 1/2, K in {1,3,5,7} (and a non-square kernel), G in
  {1, C}, batch 1, contiguous / channels_last / non-contiguous operands, float32 and float64;
- gradcheck (and gradgradcheck: the gradients are themselves registered ops) in float64;
- the torch.library registration: opcheck, torch.compile(fullgraph=True), autocast, FLOP counts,
  meta tensors;
- bad arguments raise a one-line TypeError/ValueError naming the argument;
- memory: no KxK-times-the-input temporary on the Numba CPU path;
- the CUDA simulator suite (tests/test_ops_cudasim.py) in a subprocess with NUMBA_ENABLE_CUDASIM=1.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from involution.layers import Involution2d
from involution.ops import BACKENDS, involution2d, resolve_backend
from involution.reference import involution2d_reference, output_size

from conftest import REPO

CPU_BACKENDS = ["reference", "numba_cpu"]

# (N, C, G, H, W, (KH, KW), stride, dilation): the numba_cpu layout each case exercises is noted
# (NHWC kernels run when a group has >= 8 channels and output rows are short).
CASES = [
    (2, 4, 1, 7, 6, (3, 3), 1, 1),  # odd x even, one group
    (1, 4, 4, 8, 9, (5, 5), 2, 1),  # batch 1, G = C, stride 2
    (2, 6, 6, 9, 7, (7, 7), 3, 2),  # K 7, stride 3, dilation 2, G = C
    (2, 16, 1, 6, 7, (5, 5), 2, 2),  # 16 channels per group, K 5 (NHWC)
    (1, 12, 1, 10, 8, (1, 1), 1, 1),  # K 1, 12 per group (NCHW: too few taps)
    (2, 8, 8, 5, 5, (5, 5), 1, 2),  # G = C, dilation 2 with padding 4 > half the image
    (1, 24, 2, 11, 12, (7, 7), 1, 1),  # K 7, 12 per group: one 8-block + 4 remainder (NHWC)
    (1, 16, 16, 7, 8, (3, 3), 3, 1),  # G = C, stride 3
    (1, 3, 1, 6, 5, (5, 5), 2, 2),  # odd channel count
    (1, 16, 1, 4, 40, (3, 3), 1, 1),  # wide rows, 16 per group, K 3 (NCHW)
    (2, 8, 2, 9, 10, (3, 5), (2, 1), (1, 2)),  # non-square kernel, per-axis stride/dilation
    (1, 8, 1, 9, 7, (5, 7), 2, 1),  # non-square, exactly one 8-block (NHWC), stride 2
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def make_case(case, dtype=torch.float64, layout="contiguous", seed=0):
    """Random (never zero) input and kernel for a case, in the requested memory layout."""
    n, c, g, h, w, (kh, kw), stride, dilation = case
    stride, dilation = _pair(stride), _pair(dilation)
    padding = (dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2)
    ho = output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = output_size(w, kw, stride[1], padding[1], dilation[1])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    k = torch.randn(n, g, kh, kw, ho, wo, generator=gen, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        # x: a strided slice of a wider tensor; kernel: a permuted view of another layout
        wide = torch.randn(n, c, h, 2 * w, generator=gen, dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
        k = k.permute(0, 1, 4, 5, 2, 3).contiguous().permute(0, 1, 4, 5, 2, 3)
        assert not x.is_contiguous() and not k.is_contiguous()
    return x, k, stride, padding, dilation


def spec_with_grads(x, k, stride, padding, dilation, grad_out):
    """Output and gradients by autograd through the unfold spec (independent of the op)."""
    x = x.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    out = involution2d_reference(x, k, stride, padding, dilation)
    gx, gk = torch.autograd.grad(out, (x, k), grad_out)
    return out.detach(), gx, gk


def op_with_grads(x, k, stride, padding, dilation, grad_out, backend):
    x = x.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    out = involution2d(x, k, stride, padding, dilation, backend)
    gx, gk = torch.autograd.grad(out, (x, k), grad_out)
    return out.detach(), gx, gk


def _tolerances(dtype):
    return (
        {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    )


# ------------------------------------------------------------------------------------------------
# Agreement with the spec
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-k{c[5]}-s{c[6]}-d{c[7]}"
)
def test_agrees_with_spec(case, dtype, backend):
    x, k, stride, padding, dilation = make_case(case, dtype)
    grad_out = torch.randn(
        *x.shape[:2], *k.shape[-2:], dtype=dtype, generator=torch.Generator().manual_seed(1)
    )
    want = spec_with_grads(x, k, stride, padding, dilation, grad_out)
    got = op_with_grads(x, k, stride, padding, dilation, grad_out, backend)
    for name, a, b in zip(("out", "grad_input", "grad_kernel"), got, want):
        torch.testing.assert_close(
            a, b, **_tolerances(dtype), msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "noncontiguous"])
@pytest.mark.parametrize(
    "case", [CASES[0], CASES[3], CASES[6], CASES[10]], ids=lambda c: "x".join(map(str, c[:5]))
)
def test_layouts_agree_with_spec(case, layout, backend):
    x, k, stride, padding, dilation = make_case(case, torch.float64, layout)
    grad_out = torch.randn(
        *x.shape[:2], *k.shape[-2:], dtype=x.dtype, generator=torch.Generator().manual_seed(2)
    )
    if layout == "channels_last":
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    want = spec_with_grads(x, k, stride, padding, dilation, grad_out)
    got = op_with_grads(x, k, stride, padding, dilation, grad_out, backend)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # channels_last in -> channels_last out, like a convolution
    assert got[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_auto_and_explicit_backends_match(backend):
    x, k, stride, padding, dilation = make_case(CASES[6], torch.float32)
    auto = involution2d(x, k, stride, padding, dilation, "auto")
    torch.testing.assert_close(
        involution2d(x, k, stride, padding, dilation, backend), auto, rtol=1e-5, atol=1e-5
    )


def test_resolve_backend():
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert resolve_backend("auto", cpu, torch.float32) == "numba_cpu"
    assert resolve_backend("auto", cpu, torch.float64) == "numba_cpu"
    assert resolve_backend("auto", cpu, torch.bfloat16) == "reference"
    assert resolve_backend("auto", torch.device("cuda"), torch.float16) == "numba_cuda"
    assert resolve_backend("auto", meta, torch.float32) == "reference"
    assert set(BACKENDS) == {"auto", "reference", "numba_cpu", "numba_cuda"}


# ------------------------------------------------------------------------------------------------
# gradcheck
# ------------------------------------------------------------------------------------------------

GRADCHECK_CASES = [
    (1, 4, 2, 5, 6, (3, 3), 2, 1),  # NCHW kernels
    (1, 8, 1, 4, 5, (5, 5), 1, 2),  # NHWC kernels (8 channels per group, 5x5)
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=["nchw", "nhwc"])
def test_gradcheck(case, backend):
    x, k, stride, padding, dilation = make_case(case, torch.float64)
    x.requires_grad_()
    k.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: involution2d(a, b, stride, padding, dilation, backend), (x, k)
    )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradgradcheck(backend):
    x, k, stride, padding, dilation = make_case((1, 2, 1, 4, 3, (3, 3), 1, 1), torch.float64)
    x.requires_grad_()
    k.requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda a, b: involution2d(a, b, stride, padding, dilation, backend), (x, k)
    )


# ------------------------------------------------------------------------------------------------
# torch.library registration
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    ops = torch.ops.involution
    x, k, stride, padding, dilation = make_case(CASES[3], torch.float64)
    go = torch.randn(*x.shape[:2], *k.shape[-2:], dtype=x.dtype)
    args = [list(stride), list(padding), list(dilation), backend]
    torch.library.opcheck(ops.involution2d.default, (x.requires_grad_(), k.requires_grad_(), *args))
    torch.library.opcheck(ops.involution2d_grad_input.default, (go, k, list(x.shape[2:]), *args))
    torch.library.opcheck(
        ops.involution2d_grad_kernel.default, (go, x, list(k.shape[2:4]), k.shape[1], *args)
    )


def test_flop_counter_counts_multiply_adds():
    x, k, stride, padding, dilation = make_case(CASES[2], torch.float32)
    n, c = x.shape[:2]
    _, g, kh, kw, ho, wo = k.shape
    macs = n * c * kh * kw * ho * wo
    x.requires_grad_()
    k.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        out = involution2d(x, k, stride, padding, dilation)
    flops = {str(op): count for op, count in counter.get_flop_counts()["Global"].items()}
    assert flops == {"involution.involution2d": 2 * macs}  # FLOPs = 2 x multiply-adds
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    flops = {str(op): count for op, count in counter.get_flop_counts()["Global"].items()}
    assert flops == {
        "involution.involution2d_grad_input": 2 * macs,
        "involution.involution2d_grad_kernel": 2 * macs,
    }


def test_meta_tensors():
    x, k, stride, padding, dilation = make_case(CASES[1], torch.float32)
    out = involution2d(x.to("meta"), k.to("meta"), stride, padding, dilation)
    assert out.device.type == "meta" and out.shape == (x.shape[0], x.shape[1], *k.shape[-2:])


def _model_and_input():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        Involution2d(16, kernel_size=3, stride=2, group_channels=8),
        torch.nn.ReLU(),
        Involution2d(16, kernel_size=5, stride=1, group_channels=8),
    )
    return model, torch.randn(2, 3, 9, 11)


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend):
    """fullgraph=True raises on any graph break; forward and backward match eager."""
    model, x = _model_and_input()
    eager = model(x)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=compile_backend)
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-4)


def test_autocast_cpu():
    """Under CPU autocast (bfloat16) the convolutions hand over bfloat16 kernels; the op's autocast
    rule runs it in float32 on the Numba kernels. Without autocast, the mixed dtypes are an error."""
    model, x = _model_and_input()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        mixed = involution2d(
            x[:, :1].repeat(1, 16, 1, 1), torch.randn(2, 2, 3, 3, 9, 11, dtype=torch.bfloat16)
        )
    assert out.dtype == torch.float32 and mixed.dtype == torch.float32
    torch.testing.assert_close(out, model(x), rtol=0.1, atol=0.1)  # bfloat16 convolutions upstream
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(TypeError, match="kernel dtype"):
        involution2d(
            x[:, :1].repeat(1, 16, 1, 1), torch.randn(2, 2, 3, 3, 9, 11, dtype=torch.bfloat16)
        )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    ("kernel_size", "group_channels"), [(3, 4), (5, 8)], ids=["k3-nchw", "k5-nhwc"]
)
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("size", [(7, 7), (8, 9), (13, 10)])
def test_involution2d_layer_output_size(size, stride, kernel_size, group_channels, backend):
    """Kernel generation yields exactly Ho x Wo for odd and even sizes, strides 1/2/3."""
    torch.manual_seed(0)
    layer = Involution2d(16, kernel_size, stride, group_channels, backend=backend).eval()
    x = torch.randn(2, 16, *size)
    out = layer(x)
    assert out.shape == (2, 16, -(-size[0] // stride), -(-size[1] // stride))
    pad = (kernel_size - 1) // 2
    spec = involution2d_reference(x, layer.generate_kernel(x), (stride, stride), (pad, pad), (1, 1))
    torch.testing.assert_close(out, spec, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [2, 3])
def test_ceil_avg_pool_matches_avg_pool_ceil_mode(stride):
    """Involution2d's pooling (written to compile correctly) equals AvgPool2d(ceil_mode=True)."""
    from involution.layers import CeilAvgPool2d

    x = torch.randn(2, 3, 7, 11, dtype=torch.float64, requires_grad=True)
    want = torch.nn.AvgPool2d(stride, stride, ceil_mode=True)(x)
    got = CeilAvgPool2d(stride)(x)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    torch.testing.assert_close(
        torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0]
    )


# ------------------------------------------------------------------------------------------------
# Bad arguments
# ------------------------------------------------------------------------------------------------


def _good():
    return torch.randn(2, 4, 6, 6), torch.randn(2, 2, 3, 3, 6, 6)


BAD = [
    ("input rank", lambda x, k: involution2d(x[0], k), ValueError, "input must be 4-D"),
    ("kernel rank", lambda x, k: involution2d(x, k[0]), ValueError, "kernel must be 6-D"),
    (
        "groups",
        lambda x, k: involution2d(x[:, :3], k),
        ValueError,
        r"G=2 \(kernel.shape\[1\]\) must divide the input channels C=3",
    ),
    (
        "kernel size",
        lambda x, k: involution2d(x, k[..., :5]),
        ValueError,
        r"kernel shape must be \(N, G, KH, KW, Ho, Wo\) = \(2, 2, 3, 3, 6, 6\)",
    ),
    (
        "kernel for stride",
        lambda x, k: involution2d(x, k, stride=2),
        ValueError,
        r"= \(2, 2, 3, 3, 3, 3\)",
    ),
    (
        "dtypes",
        lambda x, k: involution2d(x, k.double()),
        TypeError,
        "kernel dtype must equal input dtype torch.float32",
    ),
    (
        "integer input",
        lambda x, k: involution2d(x.long(), k.long()),
        TypeError,
        "input dtype must be one of",
    ),
    (
        "devices",
        lambda x, k: involution2d(x, k.to("meta")),
        ValueError,
        "kernel must be on the input's device cpu",
    ),
    (
        "backend",
        lambda x, k: involution2d(x, k, backend="cupy"),
        ValueError,
        "backend must be one of",
    ),
    (
        "numba_cuda on cpu",
        lambda x, k: involution2d(x, k, backend="numba_cuda"),
        ValueError,
        "backend='numba_cuda' needs CUDA tensors",
    ),
    (
        "numba_cpu on meta",
        lambda x, k: involution2d(x.to("meta"), k.to("meta"), backend="numba_cpu"),
        ValueError,
        "backend='numba_cpu' needs CPU tensors",
    ),
    (
        "numba_cpu half",
        lambda x, k: involution2d(x.half(), k.half(), backend="numba_cpu"),
        TypeError,
        "backend='numba_cpu' supports dtypes",
    ),
    (
        "stride type",
        lambda x, k: involution2d(x, k, stride="1"),
        TypeError,
        "stride must be an int or a pair of ints",
    ),
    ("stride value", lambda x, k: involution2d(x, k, stride=0), ValueError, "stride must be >= 1"),
    (
        "dilation pair",
        lambda x, k: involution2d(x, k, dilation=(1, 1, 1)),
        TypeError,
        "dilation must be an int or a pair",
    ),
    ("padding", lambda x, k: involution2d(x, k, padding=-1), ValueError, "padding must be >= 0"),
    ("too small", lambda x, k: involution2d(x[..., :2, :2], k, padding=0), ValueError, "too small"),
    (
        "input type",
        lambda x, k: involution2d(x.numpy(), k),
        TypeError,
        "input must be a torch.Tensor",
    ),
]


@pytest.mark.parametrize(("what", "call", "error", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_arguments(what, call, error, message):
    x, k = _good()
    with pytest.raises(error, match=message) as info:
        call(x, k)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# Memory and packaging
# ------------------------------------------------------------------------------------------------


def test_numba_cpu_has_no_kxk_temporaries():
    """Peak extra memory of forward+backward: the unfold spec holds K*K copies of the input,
    the Numba path only a few input-sized buffers (outputs, gradients, layout copies)."""
    from involution.bench.ops import peak_memory

    if peak_memory(lambda: None) is None:
        pytest.skip("no /proc/self/clear_refs: peak RSS cannot be reset on this system")
    n, c, h, k = 4, 64, 28, 7
    x = torch.randn(n, c, h, h, requires_grad=True)
    kern = torch.randn(n, c // 16, k, k, h, h, requires_grad=True)
    grad = torch.randn(n, c, h, h)
    input_bytes = x.numel() * x.element_size()

    def step(backend):
        out = involution2d(x, kern, backend=backend)
        out.backward(grad)
        x.grad = kern.grad = None

    step("numba_cpu")  # compile / warm up outside the measurement
    step("reference")
    numba_peak, reference_peak = (
        peak_memory(lambda: step("numba_cpu")),
        peak_memory(lambda: step("reference")),
    )
    assert reference_peak > k * k * input_bytes  # the measurement sees an unfold
    assert numba_peak < 12 * input_bytes, f"numba_cpu peak {numba_peak / input_bytes:.1f} x input"


def test_kernels_import_without_torch():
    code = (
        "import sys, involution.kernels.cpu, involution.kernels.cuda; "
        "bad = [m for m in ('torch',) if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_cuda_simulator_suite():
    """numba_cuda under Numba's CUDA simulator (must be enabled before numba.cuda is imported,
    hence a subprocess): gradcheck and agreement with the spec on small shapes."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_ops_cudasim.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def test_backward_shares_channels_last_only_when_both_gradients_use_it():
    """The forward hands its gradient over channels-last only when grad_input and grad_kernel both
    compute NHWC; on wide maps the kernel gradient stays NCHW, and one shared copy would then cost
    a second transpose back."""
    from involution.ops._numba_cpu import backward_shares_nhwc

    def case(c, g, size, k, stride=1):
        out = (size + 2 * (k // 2) - k) // stride + 1
        return torch.empty(1, c, size, size), torch.empty(1, g, k, k, out, out), (stride, stride)

    assert backward_shares_nhwc(*case(256, 16, 14, 7))  # both NHWC
    assert not backward_shares_nhwc(*case(64, 4, 56, 7))  # grad_kernel flat NCHW
    assert backward_shares_nhwc(*case(64, 4, 56, 7, stride=2))  # no flat kernel at stride 2
    assert not backward_shares_nhwc(*case(32, 2, 112, 3))  # all NCHW at 3x3
