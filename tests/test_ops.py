"""The involution op (``involution.ops.involution2d``) against its spec, on the CPU backends.

- every backend agrees with autograd through the unfold spec (``involution2d_reference``) over
  odd/even sizes, strides 1/2/3, dilations 1/2, K in {1,3,5,7} (and a non-square kernel), G in
  {1, C}, batch 1, contiguous / channels_last / non-contiguous operands, float32 and float64;
- gradcheck (and gradgradcheck: the gradients are themselves registered ops) in float64;
- the backends: ``auto``'s order and its one-line list of refusals, the registry as the one list,
  a backend added by one registry entry (the registration names none), numba_cpu's layout hook;
- the torch.library registration: opcheck, torch.compile(fullgraph=True), autocast, FLOP counts,
  meta tensors;
- bad arguments raise a one-line TypeError/ValueError naming the argument, the same one from
  ``involution2d``, ``window_dot`` and ``window_dot_key_grad`` for the arguments they share;
- memory: no KxK-times-the-input temporary on the Numba CPU path;
- the CUDA simulator suite (tests/test_ops_cudasim.py) in a subprocess with NUMBA_ENABLE_CUDASIM=1;
- the fused op (``fused_involution2d``) against its composition (a matrix product, then the unfold
  spec) in float64 over odd sizes, strides, dilation and channels_last, both backends; gradcheck,
  gradgradcheck, opcheck, FLOP counts, meta tensors, bad arguments.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from involution.layers import Involution2d
from involution.ops import (
    BACKENDS,
    _backends,
    _reference,
    fused_involution2d,
    fused_kernel_runs,
    involution2d,
    resolve_backend,
    window_dot,
    window_dot_key_grad,
)
from involution.ops._formats import is_channels_last

from conftest import REPO
from helpers import (
    CASES,
    FUSED_CASES,
    composed_with_grads,
    fused_with_grads,
    make_case,
    make_fused_case,
    op_with_grads,
    spec_with_grads,
    tolerances,
)

CPU_BACKENDS = ["reference", "numba_cpu", "torch"]

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
            a, b, **tolerances(dtype), msg=lambda m, name=name: f"{name}: {m}"
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


def test_resolve_backend(monkeypatch):
    from involution.ops import _numba_cuda

    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert resolve_backend("auto", cpu, torch.float32) == "numba_cpu"
    assert resolve_backend("auto", cpu, torch.float64) == "numba_cpu"
    assert resolve_backend("auto", cpu, torch.bfloat16) == "torch"
    monkeypatch.setattr(_numba_cuda, "unusable", lambda index: None)  # as on a working GPU
    assert resolve_backend("auto", torch.device("cuda"), torch.float16) == "numba_cuda"
    assert resolve_backend("auto", meta, torch.float32) == "torch"
    assert set(BACKENDS) == {"auto", "reference", "numba_cpu", "numba_cuda", "torch"}


def test_auto_lists_every_refusal_in_one_line():
    with pytest.raises(ValueError, match="backend='auto' found no backend") as info:
        resolve_backend("auto", torch.device("cpu"), torch.int64)
    message = str(info.value)
    assert "\n" not in message
    assert "numba_cuda needs CUDA tensors" in message
    assert "numba_cpu supports dtypes" in message
    assert "torch supports dtypes" in message
    assert "reference supports dtypes" in message


def test_every_backend_implements_the_interface():
    """The registry is the one list: ``BACKENDS`` (the public names) comes from it, and each
    entry has what the registration calls."""
    assert BACKENDS == ("auto", *(b.NAME for b in _backends.BACKENDS))
    for backend in _backends.BACKENDS:
        assert _backends.get(backend.NAME) is backend
        assert all(d.is_floating_point for d in backend.DTYPES), backend.NAME
        for entry in ("can_run", "grad_out_format", "forward", "grad_input", "grad_kernel"):
            assert callable(getattr(backend, entry)), (backend.NAME, entry)


class _CountingBackend:
    """A backend defined outside the package: the reference's maths, with its calls counted."""

    NAME = "counting"
    DTYPES = (torch.float64,)

    def __init__(self):
        self.calls: list[str] = []
        self.grad_out_channels_last: list[bool] = []

    def can_run(self, device, dtype, explicit):
        return None if explicit and dtype in self.DTYPES else "runs only when named, float64"

    def grad_out_format(self, input, kernel, stride):
        self.calls.append("grad_out_format")
        return torch.channels_last

    def __getattr__(self, name):  # forward, grad_input, grad_kernel
        def entry(*args):
            self.calls.append(name)
            if name != "forward":  # args[0] is the incoming gradient
                self.grad_out_channels_last.append(is_channels_last(args[0]))
            return getattr(_reference, name)(*args)

        return entry


def test_a_new_backend_is_one_registry_entry(monkeypatch):
    """The registration names no backend: one more entry in the registry runs the op (forward,
    both gradients, the window_dot ops), with the backend's own layout hook; "auto" skips it."""
    counting = _CountingBackend()
    monkeypatch.setattr(_backends, "BACKENDS", (*_backends.BACKENDS, counting))
    x, k, stride, padding, dilation = make_case(CASES[3], torch.float64)
    grad_out = torch.randn(*x.shape[:2], *k.shape[-2:], dtype=x.dtype)
    want = spec_with_grads(x, k, stride, padding, dilation, grad_out)
    got = op_with_grads(x, k, stride, padding, dilation, grad_out, "counting")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert counting.calls == ["forward", "grad_out_format", "grad_input", "grad_kernel"]
    assert counting.grad_out_channels_last == [True, True]  # the hook's format, for both ops
    window_dot(grad_out, x, k.shape[2:4], stride, padding, dilation, 1, "counting")
    window_dot_key_grad(grad_out, k, x.shape[2:], stride, padding, dilation, "counting")
    assert counting.calls[-2:] == ["grad_kernel", "grad_input"]
    assert resolve_backend("auto", torch.device("cpu"), torch.float64) == "numba_cpu"
    with pytest.raises(TypeError, match="^backend='counting' runs only when named, float64$"):
        resolve_backend("counting", torch.device("cpu"), torch.float32)


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
    rule runs it in float32 on the Numba kernels. Without autocast, the mixed dtypes are an
    error."""
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


# One bad argument, the same one-line error from every public op: (what, keyword overrides,
# error, message); the tensors are good, so only the argument check speaks.
SHARED_BAD = [
    ("stride 0", {"stride": 0}, ValueError, "stride must be >= 1, got 0"),
    ("stride pair", {"stride": (1, 0)}, ValueError, r"stride must be >= 1, got \(1, 0\)"),
    ("negative padding", {"padding": -1}, ValueError, "padding must be >= 0, got -1"),
    ("dilation 0", {"dilation": 0}, ValueError, "dilation must be >= 1, got 0"),
    ("stride type", {"stride": "1"}, TypeError, "stride must be an int or a pair of ints, got '1'"),
    (
        "backend name",
        {"backend": "cupy"},
        ValueError,
        r"backend must be one of \('auto', 'numba_cuda', 'numba_cpu', 'torch', 'reference'\), "
        "got 'cupy'",
    ),
    (
        "numba_cuda on cpu",
        {"backend": "numba_cuda"},
        ValueError,
        r"backend='numba_cuda' needs CUDA tensors \(device 'cuda'\), got device cpu",
    ),
]


def _public_ops():
    """Each public op on good operands (4 channels, 2 groups, 6x6, 3x3 kernel), keywords open."""
    x, k = _good()
    return {
        "involution2d": lambda **kw: involution2d(x, k, **kw),
        "window_dot": lambda **kw: window_dot(x, x, 3, groups=2, **kw),
        "window_dot_key_grad": lambda **kw: window_dot_key_grad(x, k, (6, 6), **kw),
    }


@pytest.mark.parametrize(
    ("what", "overrides", "error", "message"), SHARED_BAD, ids=[b[0] for b in SHARED_BAD]
)
def test_public_ops_share_one_argument_check(what, overrides, error, message):
    messages = set()
    for op in _public_ops().values():
        with pytest.raises(error, match=f"^{message}$") as info:
            op(**overrides)
        messages.add(str(info.value))
    assert len(messages) == 1, messages


def test_public_ops_name_the_tensor_of_a_wrong_rank_or_shape():
    x, k = _good()
    rank_errors = [
        (lambda: involution2d(x[0], k), r"input must be 4-D \[N,C,H,W\], got shape \(4, 6, 6\)"),
        (lambda: involution2d(x, k[0]), r"kernel must be 6-D \[N,G,KH,KW,Ho,Wo\], got shape"),
        (lambda: window_dot(x[0], x, 3), r"query must be 4-D \[N,C,Ho,Wo\], got shape \(4, 6,"),
        (lambda: window_dot(x, x[0], 3), r"key must be 4-D \[N,C,H,W\], got shape \(4, 6, 6\)"),
        (lambda: window_dot_key_grad(x, k[0], (6, 6)), r"weights must be 6-D \[N,G,KH,KW,Ho,Wo\]"),
        (lambda: involution2d(x, k[..., :5]), r"kernel shape must be \(N, G, KH, KW, Ho, Wo\)"),
        (lambda: window_dot(x, x, 3, stride=2), r"query spatial size \(6, 6\) must be the output"),
        (lambda: window_dot_key_grad(x, k, (5, 5)), r"do not fit key size \(5, 5\)"),
    ]
    for call, message in rank_errors:
        with pytest.raises(ValueError, match=message) as info:
            call()
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


def test_numba_cpu_shares_channels_last_only_when_both_gradients_use_it():
    """numba_cpu's layout hook: the forward hands its gradient over channels-last only when
    grad_input and grad_kernel both compute NHWC; on wide maps the kernel gradient stays NCHW, and
    one shared copy would then cost a second transpose back. The other backends never ask, nor
    do the blocked kernels (groups of 16 channels), which read either layout as it comes."""
    from involution.ops import _numba_cpu, _numba_cuda, _torch

    def case(c, g, size, k, stride=1):
        out = (size + 2 * (k // 2) - k) // stride + 1
        return torch.empty(1, c, size, size), torch.empty(1, g, k, k, out, out), (stride, stride)

    def shares(*args):
        return _numba_cpu.grad_out_format(*args) == torch.channels_last

    # 8 channels per group: the NCHW / NHWC kernels whose layouts this hook arranges
    assert shares(*case(128, 16, 14, 7))  # both NHWC
    assert not shares(*case(32, 4, 56, 7))  # grad_kernel flat NCHW
    assert shares(*case(32, 4, 56, 7, stride=2))  # no flat kernel at stride 2
    assert not shares(*case(16, 2, 112, 3))  # all NCHW at 3x3
    assert _numba_cpu.grad_out_format(*case(16, 2, 112, 3)) is None
    for other in (_reference, _numba_cuda, _torch):
        assert other.grad_out_format(*case(256, 16, 14, 7)) is None
    # groups of 16 channels: the blocked kernels read any layout, so the hook never asks
    assert _numba_cpu.grad_out_format(*case(256, 16, 14, 7)) is None


# ------------------------------------------------------------------------------------------------
# The fused op
# ------------------------------------------------------------------------------------------------


def _fused_case_id(case):
    n, c, g, r, h, w, k, s, d = case
    return f"N{n}C{c}G{g}R{r}-{h}x{w}-k{k}-s{s}-d{d}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", FUSED_CASES, ids=_fused_case_id)
def test_fused_agrees_with_composition(case, layout, backend):
    """Output and the gradients of input, hidden map, weight and bias equal the composition's
    (the kernel as a matrix product, then the unfold spec) in float64; the output keeps the
    input's memory format."""
    operands, stride, padding, dilation = make_fused_case(case, layout=layout)
    k = case[6]
    out_shape = (case[0], case[1], operands[1].shape[2], operands[1].shape[3])
    grad_out = torch.randn(
        out_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    got = fused_with_grads(operands, k, stride, padding, dilation, grad_out, backend)
    want = composed_with_grads(operands, k, stride, padding, dilation, grad_out)
    names = ("out", "grad_input", "grad_hidden", "grad_weight", "grad_bias")
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
    assert got[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    fused_kernel = backend == "numba_cpu" and case[1] // case[2] % 16 == 0
    assert fused_kernel_runs(operands[0], case[2], backend) == fused_kernel


def test_fused_float32_and_no_bias():
    operands, stride, padding, dilation = make_fused_case(FUSED_CASES[0], torch.float32)
    x, hidden, weight, _ = operands
    got = fused_involution2d(x, hidden, weight, None, 7, stride, padding, dilation, "numba_cpu")
    want = fused_involution2d(x, hidden, weight, None, 7, stride, padding, dilation, "reference")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # a 1x1 convolution's weight [T, R, 1, 1] is taken as it is
    conv = fused_involution2d(
        x, hidden, weight[:, :, None, None], None, 7, stride, padding, dilation
    )
    torch.testing.assert_close(conv, got, rtol=0, atol=0)


@pytest.mark.parametrize("case", [FUSED_CASES[1], FUSED_CASES[4]], ids=["kernel", "composition"])
def test_fused_gradcheck_and_gradgradcheck(case):
    """Float64 gradcheck of all four operands (the fused backward kernel, or the composition);
    double backward runs through the composition."""
    small = (1, case[1], case[2], 3, 5, 6, 3, case[7], 1)
    operands, stride, padding, dilation = make_fused_case(small)
    leaves = [t.requires_grad_() for t in operands]

    def fn(*tensors):
        return fused_involution2d(*tensors, 3, stride, padding, dilation, "numba_cpu")

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(fn, leaves, eps=1e-6, atol=1e-6, fast_mode=True)


def test_fused_opcheck():
    ops = torch.ops.involution
    operands, stride, padding, dilation = make_fused_case(FUSED_CASES[1])
    args = [[5, 5], list(stride), list(padding), list(dilation), "numba_cpu"]
    x, hidden, weight, bias = (t.requires_grad_() for t in operands)
    torch.library.opcheck(ops.involution2d.fused, (x, hidden, weight, bias, *args))
    go = torch.randn(1, 16, *hidden.shape[2:], dtype=x.dtype)
    torch.library.opcheck(
        ops.involution2d_fused_backward.default,
        (go, x.detach(), hidden.detach(), weight.detach(), bias.detach(), *args),
    )


def test_fused_flop_counts_and_meta_tensors():
    """The forward counts the generation's and the aggregation's multiply-adds, under the
    aggregation op (so that counting a model finds the involution layers); the backward op
    counts both again, the kernel gradient, grad_hidden and grad_weight."""
    operands, stride, padding, dilation = make_fused_case(FUSED_CASES[0], torch.float32)
    x, hidden, weight, bias = (t.requires_grad_() for t in operands)
    n, c, _, _ = x.shape
    taps, r = weight.shape
    ho, wo = hidden.shape[2:]
    generation, aggregation = n * taps * r * ho * wo, n * c * 49 * ho * wo
    with FlopCounterMode(display=False) as counter:
        out = fused_involution2d(x, hidden, weight, bias, 7, stride, padding, dilation)
    flops = {str(op): v for op, v in counter.get_flop_counts()["Global"].items()}
    assert flops == {"involution.involution2d": 2 * (generation + aggregation)}
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    flops = {str(op): v for op, v in counter.get_flop_counts()["Global"].items()}
    assert flops == {
        "involution.involution2d_fused_backward": 2 * (2 * aggregation + 3 * generation)
    }
    meta = fused_involution2d(
        *(t.detach().to("meta") for t in operands), 7, stride, padding, dilation
    )
    assert meta.device.type == "meta" and meta.shape == out.shape


def test_fused_bad_arguments():
    operands, stride, padding, dilation = make_fused_case(FUSED_CASES[0])
    x, hidden, weight, bias = operands
    with pytest.raises(ValueError, match=r"hidden shape must be \(N, R, Ho, Wo\)"):
        fused_involution2d(x, hidden[..., :-1], weight, bias, 7)
    with pytest.raises(ValueError, match=r"weight rows \(97\) must be G\*KH\*KW"):
        fused_involution2d(x, hidden, weight[:-1], bias, 7)
    with pytest.raises(ValueError, match=r"bias shape must be \(98,\)"):
        fused_involution2d(x, hidden, weight, bias[:-1], 7)
    with pytest.raises(ValueError, match=r"weight must be 2-D \[T,R\]"):
        fused_involution2d(x, hidden, weight[0], bias, 7)
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_involution2d(x, hidden, weight, bias, 7, backend="cupy")


# ------------------------------------------------------------------------------------------------
# Results are tensors of their own
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True], ids=["op", "fused"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(("channels", "groups"), [(32, 2), (64, 8), (16, 8)])
@pytest.mark.parametrize("size", [1, 5])
def test_results_are_never_views(size, channels, groups, layout, backend, fused):
    """Every backend's output and gradients own their storage (at 1x1 maps a permuted result is
    contiguous in both layouts, and an unfold's is a reshape): an in-place ReLU on the output,
    as a network applies one, then backward run, and agree with the out-of-place ReLU.
    (32, 2): the blocked kernels; (64, 8) and (16, 8): numba_cpu's NHWC and NCHW ones."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, size, size, generator=gen, dtype=torch.float64)
    hidden = torch.randn(2, 4, size, size, generator=gen, dtype=torch.float64)
    weight = torch.randn(groups * 9, 4, generator=gen, dtype=torch.float64)
    kern = torch.randn(2, groups, 3, 3, size, size, generator=gen, dtype=torch.float64)
    x = x.contiguous(memory_format=fmt)
    operands = (x, hidden, weight) if fused else (x, kern)
    results = []
    for relu in (torch.relu_, torch.relu):
        leaves = [t.detach().clone().requires_grad_() for t in operands]
        if fused:
            out = fused_involution2d(*leaves, None, 3, 1, 1, 1, backend)
        else:
            out = involution2d(*leaves, 1, 1, 1, backend)
        assert not out._is_view()
        out = relu(out)
        out.square().sum().backward()
        assert not any(leaf.grad._is_view() for leaf in leaves)
        results.append([out.detach(), *(leaf.grad for leaf in leaves)])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
