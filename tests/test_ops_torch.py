"""Backend ``torch`` (``involution.ops._torch``) beyond test_ops.py's backend lists (agreement
with the spec on every case and layout, gradcheck, gradgradcheck and opcheck run it there):

- memory: at every RedNet-50 shape none of the three ops holds more than twice the output beyond
  its result (a peak-RSS probe, which sees the reference's unfold);
- ``torch.compile`` with Inductor: the taps of the forward and of both gradients are in the
  compiled code (no call of the opaque op; the forward one fused kernel on the CPU), equal to
  eager; the other backends stay opaque; an eager call imports no Inductor;
- ``auto``: torch wherever no Numba backend runs (CPU half precision; a CUDA device where
  numba-cuda refuses: ROCm, no driver, a kernel that does not launch), with one logged line per
  process saying why, also when the first call is compiled with fullgraph=True;
- half precision accumulated in float32, autocast, the FLOP counter, the meta device;
- on a GPU (``pytest -m gpu``, run by ``.ci/gpu-check``): agreement, half precision, Inductor's
  Triton kernels, and the memory bound by ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from involution.bench.ops import REDNET50_SHAPES, peak_memory
from involution.layers import Involution2d
from involution.ops import (
    _backends,
    _numba_cpu,
    _numba_cuda,
    _torch,
    fused_involution2d,
    fused_kernel_runs,
    involution2d,
    resolve_backend,
)

from helpers import (
    CASES,
    FUSED_CASES,
    assert_half_precision,
    composed_with_grads,
    make_case,
    make_fused_case,
    op_with_grads,
    spec_with_grads,
)

CUDA = torch.device("cuda")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _operands(n, c, size, k, stride=1, dtype=torch.float32, device="cpu", layout=None):
    """RedNet-style operands (G = C/16, same padding): input, kernel, incoming gradient."""
    g, pad = max(1, c // 16), (k - 1) // 2
    out = (size + 2 * pad - k) // stride + 1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, size, size, generator=gen).to(device, dtype)
    kern = torch.randn(n, g, k, k, out, out, generator=gen).to(device, dtype)
    grad = torch.randn(n, c, out, out, generator=gen).to(device, dtype)
    if layout is not None:
        x, grad = x.contiguous(memory_format=layout), grad.contiguous(memory_format=layout)
    return x, kern, grad, (stride, stride), (pad, pad), (1, 1)


def _three_ops(x, kern, grad, stride, padding, dilation, backend=_torch):
    """The backend's forward, grad_input and grad_kernel as zero-argument calls."""
    g, k = kern.shape[1], kern.shape[2:4]
    return {
        "forward": lambda: backend.forward(x, kern, stride, padding, dilation),
        "grad_input": lambda: backend.grad_input(
            grad, kern, x.shape[2:], stride, padding, dilation
        ),
        "grad_kernel": lambda: backend.grad_kernel(grad, x, k, g, stride, padding, dilation),
    }


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------


def _extra_bytes(fn) -> int | None:
    """Peak resident memory ``fn()`` adds beyond the result it returns (None: no probe here)."""
    kept = []
    peak = peak_memory(lambda: kept.append(fn()))
    return None if peak is None else peak - kept[0].numel() * kept[0].element_size()


@pytest.fixture
def probe():
    if peak_memory(lambda: None) is None:
        pytest.skip("no /proc/self/clear_refs: peak RSS cannot be reset on this system")
    return _extra_bytes


@pytest.mark.parametrize(
    ("shape", "layout"),
    [*((s, None) for s in REDNET50_SHAPES), ((64, 56, 7), torch.channels_last)],
    ids=[f"{c}x{s}x{k}" for c, s, k in REDNET50_SHAPES] + ["64x56x7-channels_last"],
)
def test_no_temporary_beyond_twice_the_output(shape, layout, probe):
    """float32, batch 4 (the ratios do not depend on it): the target (2x), and the design:
    forward and grad_input accumulate into their result, grad_kernel holds one output-sized
    product buffer."""
    channels, size, k = shape
    operands = _operands(4, channels, size, k, layout=layout)
    output = operands[2].numel() * operands[2].element_size()
    design = {"forward": 0.1, "grad_input": 0.1, "grad_kernel": 1.1}
    for name, fn in _three_ops(*operands).items():
        fn()  # warm up (thread pools, allocator) outside the measurement
        extra = probe(fn)
        assert extra <= 2 * output, f"{name}: {extra / output:.2f}x the output beyond its result"
        assert extra <= design[name] * output, f"{name}: {extra / output:.2f}x the output"


def test_the_memory_probe_sees_an_unfold(probe):
    """The same probe on the reference's forward: K*K copies of the input beyond its result."""
    from involution.ops import _reference

    x, kern, _, stride, padding, dilation = _operands(4, 256, 14, 7)
    unfold = probe(lambda: _reference.forward(x, kern, stride, padding, dilation))
    assert unfold > (7 * 7 - 1) * x.numel() * x.element_size()


# ------------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------------


def _compiled_with_code(backend, x, kern, grad, stride, padding, dilation):
    """(out, grad_input, grad_kernel) of an Inductor-compiled forward(+backward, where ``grad``
    is given), and the Python wrapper code Inductor generated for each graph."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    fn = torch.compile(
        lambda a, b: involution2d(a, b, stride, padding, dilation, backend), fullgraph=True
    )
    if grad is None:
        with torch.no_grad():
            return run_and_get_code(lambda: (fn(x, kern),))
    a, b = x.detach().clone().requires_grad_(), kern.detach().clone().requires_grad_()

    def step():
        out = fn(a, b)
        return (out, *torch.autograd.grad(out, (a, b), grad))

    return run_and_get_code(step)


def _calls(code: str) -> str:
    """The body of the generated ``call`` (what runs): kernels and extern calls."""
    return code.split("def call(", 1)[1].split("\ndef ", 1)[0]


def _explicit_case(n, c, g, size, kernel_size, stride, padding, dilation, dtype=torch.float64):
    from involution.ops import output_size

    out = [output_size(size[i], kernel_size[i], stride[i], padding[i], dilation[i]) for i in (0, 1)]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, c, *size, generator=gen, dtype=dtype)
    kern = torch.randn(n, g, *kernel_size, *out, generator=gen, dtype=dtype)
    return x, kern, stride, padding, dilation


# (x, kernel, stride, padding, dilation) beyond the default padding of helpers.CASES
EDGE_CASES = {
    "explicit padding": lambda: _explicit_case(2, 6, 3, (9, 8), (3, 5), (2, 1), (3, 1), (1, 2)),
    "no padding": lambda: _explicit_case(1, 4, 2, (7, 9), (3, 3), (1, 2), (0, 0), (2, 1)),
    # a 1x1 image read by taps at -2 and +2 only: every result is zero
    "taps only in the padding": lambda: _explicit_case(
        1, 2, 1, (1, 1), (2, 2), (1, 1), (2, 2), (4, 4)
    ),
    "stride, dilation, channels_last": lambda: make_case(
        (2, 8, 2, 9, 8, (3, 3), 2, 2), torch.float64, "channels_last"
    ),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_eager_and_decompositions_agree_with_spec(case, monkeypatch):
    """Eager, and as Inductor traces it (its decomposition table applied; the
    ``aot_eager_decomp_partition`` backend then runs the graph without generating code, where
    Inductor would fuse it): forward and both gradients equal autograd through the unfold spec,
    and the compiled graph runs none of the backend's eager code."""
    x, kern, stride, padding, dilation = EDGE_CASES[case]()
    grad = torch.randn(*x.shape[:2], *kern.shape[-2:], dtype=x.dtype)
    want = spec_with_grads(x, kern, stride, padding, dilation, grad)
    eager = op_with_grads(x, kern, stride, padding, dilation, grad, "torch")
    calls = []
    for name in ("forward", "grad_input", "grad_kernel"):
        original = getattr(_torch, name)
        monkeypatch.setattr(_torch, name, lambda *a, f=original: calls.append(f) or f(*a))
    torch._dynamo.reset()
    fn = torch.compile(
        lambda a, b: involution2d(a, b, stride, padding, dilation, "torch"),
        fullgraph=True,
        backend="aot_eager_decomp_partition",
    )
    a, b = x.detach().clone().requires_grad_(), kern.detach().clone().requires_grad_()
    out = fn(a, b)
    compiled = (out.detach(), *torch.autograd.grad(out, (a, b), grad))
    for got in (eager, compiled):
        for name, actual, expected in zip(("out", "grad_input", "grad_kernel"), got, want):
            torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10, msg=name)
    assert calls == []
    assert compiled[0].stride() == eager[0].stride()  # the op's memory format, compiled too


def test_inductor_fuses_the_forward_taps_into_one_kernel():
    """What Inductor generates on the CPU (float32, K = 3; a C++ build of 49 taps takes
    minutes here): one fused loop nest for all the taps, no call of the registered op."""
    x, kern, _, stride, padding, dilation = _operands(2, 16, 9, 3, stride=2)
    (out,), code = _compiled_with_code("torch", x, kern, None, stride, padding, dilation)
    torch.testing.assert_close(out, involution2d(x, kern, stride, padding, dilation, "torch"))
    (forward,) = code
    assert "torch.ops.involution" not in _calls(forward)
    kernels = [line for line in _calls(forward).splitlines() if "cpp_fused" in line]
    assert len(kernels) == 1, kernels


def test_other_backends_stay_opaque_to_inductor():
    """The decompositions fall through for every other backend: numba_cpu's op is one call."""
    x, kern, grad, stride, padding, dilation = _operands(1, 16, 6, 3)
    (out, *_), code = _compiled_with_code("numba_cpu", x, kern, grad, stride, padding, dilation)
    assert "torch.ops.involution.involution2d.default" in _calls(code[0])
    torch.testing.assert_close(out, involution2d(x, kern, backend="reference"))


def test_eager_calls_import_no_inductor_decompositions():
    """The decompositions are registered when Dynamo first traces the backend, not on import or
    in eager calls (importing Inductor's decompositions with the package would take a second)."""
    code = (
        "import sys, torch\n"
        "from involution.ops import involution2d\n"
        "x = torch.randn(1, 4, 5, 5, requires_grad=True)\n"
        "involution2d(x, torch.randn(1, 1, 3, 3, 5, 5), backend='torch').sum().backward()\n"
        "print('torch._inductor.decomposition' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "False", done.stdout


# ------------------------------------------------------------------------------------------------
# auto
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def notes(monkeypatch, caplog):
    """The lines ``auto`` logs, with the once-per-process memory of this process emptied."""
    monkeypatch.setattr(_backends, "_NOTED", set())
    caplog.set_level(logging.WARNING, logger="involution.ops")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "involution.ops"]


def _device_and_dtype(note: str) -> tuple[str, str]:
    return re.search(r"runs 'torch' on (\w+) (\w+) tensors", note).groups()


def test_auto_falls_back_to_torch_saying_why_once(notes):
    x, kern, _, stride, padding, dilation = _operands(2, 16, 6, 3, dtype=torch.bfloat16)
    for _ in range(2):
        out = involution2d(x, kern, stride, padding, dilation)
    want = involution2d(x.double(), kern.double(), stride, padding, dilation, "reference")
    torch.testing.assert_close(out.double(), want, rtol=0.05, atol=0.05)
    (line,) = notes()
    assert line.startswith("involution: backend='auto' runs 'torch' on cpu bfloat16 tensors")
    assert "numba_cpu supports dtypes" in line and "\n" not in line
    involution2d(x.float(), kern.float(), stride, padding, dilation)  # numba_cpu runs: no note
    assert resolve_backend("auto", torch.device("meta"), torch.float32) == "torch"  # no note
    assert len(notes()) == 1


def test_auto_on_cuda_runs_torch_when_numba_cuda_refuses(monkeypatch, notes):
    monkeypatch.setattr(
        _numba_cuda, "can_run", lambda device, dtype, explicit: "refuses here (test)"
    )
    for dtype in _torch.DTYPES:
        assert resolve_backend("auto", CUDA, dtype) == "torch"
    assert all("numba_cuda refuses here (test)" in line for line in notes())
    assert [_device_and_dtype(line) for line in notes()] == [
        ("cuda", str(d).replace("torch.", "")) for d in _torch.DTYPES
    ]
    with pytest.raises(ValueError, match="^backend='numba_cuda' refuses here \\(test\\)$"):
        resolve_backend("numba_cuda", CUDA, torch.float32)


def test_numba_cuda_refuses_rocm_and_a_device_it_cannot_launch_on(monkeypatch):
    """Its probe: ROCm builds of torch, no driver, any error of a one-thread launch (here: the
    driver this machine lacks once numba-cuda is made to believe in one); once per device."""
    import numba.cuda

    monkeypatch.setattr(_numba_cuda, "_UNUSABLE", {})
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    assert _numba_cuda.can_run(CUDA, torch.float32, False) == (
        "needs an NVIDIA GPU; this torch runs ROCm/HIP 6.2.41133"
    )
    monkeypatch.setattr(torch.version, "hip", None)
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the probe's refusals cannot be staged")
    assert "numba.cuda.is_available() is False" in _numba_cuda.can_run(CUDA, torch.float32, False)
    monkeypatch.setattr(_numba_cuda, "_UNUSABLE", {})
    monkeypatch.setattr(numba.cuda, "is_available", lambda: True)
    reason = _numba_cuda.can_run(torch.device("cuda:1"), torch.float16, False)
    assert reason.startswith("cannot launch a kernel on cuda:1 (") and "\n" not in reason
    monkeypatch.setattr(_numba_cuda, "_probe", lambda index: pytest.fail("probed twice"))
    assert _numba_cuda.can_run(torch.device("cuda:1"), torch.float32, True) == reason
    assert resolve_backend("auto", torch.device("cuda:1"), torch.float32) == "torch"


def test_auto_resolves_and_notes_under_fullgraph_compile(monkeypatch, notes):
    """Dynamo traces the resolution: the numba-cuda probe and the note run for real at trace
    time (a traced one would be a graph break), and the result is the eager one."""
    monkeypatch.setattr(_numba_cuda, "_UNUSABLE", {0: "cannot launch a kernel on cuda:0 (test)"})
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="eager")
    def resolved(x):
        picked = resolve_backend("auto", torch.device("cuda", 0), torch.float32)
        return x + len(picked)

    assert resolved(torch.zeros(1)).item() == len("torch")
    x, kern, _, stride, padding, dilation = _operands(1, 16, 5, 3, dtype=torch.float16)
    compiled = torch.compile(involution2d, fullgraph=True, backend="eager")
    out = compiled(x, kern, stride, padding, dilation)
    torch.testing.assert_close(out, involution2d(x, kern, stride, padding, dilation, "torch"))
    assert [_device_and_dtype(line) for line in notes()] == [
        ("cuda", "float32"),
        ("cpu", "float16"),
    ]
    assert "numba_cuda cannot launch a kernel on cuda:0 (test)" in notes()[0]


# ------------------------------------------------------------------------------------------------
# Precision, autocast, FLOPs, meta
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, requires_cuda])]
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_accumulates_in_float32(dtype, device):
    assert_half_precision("torch", dtype, device)


def test_autocast_and_flop_counter():
    """CPU autocast hands the op bfloat16 operands, which its rule runs in float32; the FLOP
    counter sees the three ops (2 FLOPs per multiply-add each), not the taps inside."""
    x, kern, grad, stride, padding, dilation = _operands(2, 16, 7, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = involution2d(x, kern.bfloat16(), stride, padding, dilation, "torch")
    assert out.dtype == torch.float32
    want = involution2d(x, kern.bfloat16().float(), stride, padding, dilation, "torch")
    torch.testing.assert_close(out, want)
    x.requires_grad_()
    kern.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        involution2d(x, kern, stride, padding, dilation, "torch").backward(grad)
    flops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    macs = grad.numel() * 9
    assert flops == {
        "involution.involution2d": 2 * macs,
        "involution.involution2d_grad_input": 2 * macs,
        "involution.involution2d_grad_kernel": 2 * macs,
    }


def test_meta_device():
    """``auto`` on meta tensors is torch; the op answers from its fake kernel, and the backend's
    own code runs there too (no data, same shapes and memory formats)."""
    x, kern, grad, stride, padding, dilation = _operands(
        2, 32, 9, 5, stride=2, device="meta", layout=torch.channels_last
    )
    out = involution2d(x, kern, stride, padding, dilation)
    assert out.device.type == "meta" and out.shape == grad.shape
    results = {
        name: fn() for name, fn in _three_ops(x, kern, grad, stride, padding, dilation).items()
    }
    assert results["forward"].shape == grad.shape
    assert results["forward"].is_contiguous(memory_format=torch.channels_last)
    assert results["grad_input"].shape == x.shape
    assert results["grad_input"].is_contiguous(memory_format=torch.channels_last)
    assert results["grad_kernel"].shape == kern.shape
    assert all(t.device.type == "meta" for t in results.values())


# ------------------------------------------------------------------------------------------------
# On a GPU
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize(
    "case", [CASES[1], CASES[2], CASES[6], CASES[10]], ids=lambda c: "x".join(map(str, c[:5]))
)
def test_gpu_agrees_with_spec(case, layout):
    x, k, stride, padding, dilation = make_case(case, torch.float64, layout)
    grad = torch.randn(*x.shape[:2], *k.shape[-2:], dtype=x.dtype)
    want = spec_with_grads(x, k, stride, padding, dilation, grad)
    got = op_with_grads(x.to(CUDA), k.to(CUDA), stride, padding, dilation, grad.to(CUDA), "torch")
    for a, b in zip(got, want):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@requires_cuda
def test_gpu_auto_runs_torch_where_numba_cuda_refuses(monkeypatch, notes):
    """On this GPU numba-cuda's probe passes (auto is numba_cuda); made to refuse, auto runs
    the torch backend on the CUDA tensors, with the same result."""
    x, kern, grad, stride, padding, dilation = _operands(2, 32, 14, 7, device="cuda")
    assert resolve_backend("auto", CUDA, torch.float32) == "numba_cuda"
    fast = involution2d(x, kern, stride, padding, dilation)
    monkeypatch.setattr(_numba_cuda, "can_run", lambda device, dtype, explicit: "refuses (test)")
    assert resolve_backend("auto", CUDA, torch.float32) == "torch"
    torch.testing.assert_close(involution2d(x, kern, stride, padding, dilation), fast)
    assert "numba_cuda refuses (test)" in notes()[0]


@pytest.mark.gpu
@requires_cuda
def test_gpu_inductor_fuses_the_forward_taps_into_one_kernel():
    """K = 7: Inductor's Triton code for the forward is one kernel for the 49 taps; neither
    graph calls the registered ops; forward and gradients equal eager."""
    x, kern, grad, stride, padding, dilation = _operands(4, 64, 14, 7, device="cuda")
    results, code = _compiled_with_code("torch", x, kern, grad, stride, padding, dilation)
    want = op_with_grads(x, kern, stride, padding, dilation, grad, "torch")
    for got, expected in zip(results, want):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for graph in code:
        assert "torch.ops.involution" not in _calls(graph)
    launches = [line for line in _calls(code[0]).splitlines() if ".run(" in line]
    assert len(launches) == 1, launches


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", REDNET50_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_no_temporary_beyond_twice_the_output(shape, dtype):
    """``torch.cuda.max_memory_allocated`` during each op, beyond its result, at batch 8: half
    precision accumulates in a float32 buffer (twice the output's bytes), float32 in the
    result itself."""
    channels, size, k = shape
    operands = _operands(8, channels, size, k, dtype=dtype, device="cuda")
    output = operands[2].numel() * operands[2].element_size()
    for name, fn in _three_ops(*operands).items():
        fn()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base - result.numel() * result.element_size()
        assert extra <= 2 * output + 2**16, f"{name}: {extra / output:.2f}x the output"


# ------------------------------------------------------------------------------------------------
# The fused op where no Numba backend runs
# ------------------------------------------------------------------------------------------------


def _fused_step(fn, operands, grad):
    """Output and the four gradients of ``fn(x, hidden, weight, bias)``."""
    leaves = [t.detach().clone().requires_grad_() for t in operands]
    out = fn(*leaves)
    return (out.detach(), *torch.autograd.grad(out, leaves, grad))


@pytest.mark.parametrize("case", [FUSED_CASES[0], FUSED_CASES[1]], ids=["k7", "stride2"])
def test_fused_op_without_numba_runs_torch_eager_and_compiled(case, monkeypatch, notes):
    """With the Numba CPU backend refusing (as where Numba cannot run), ``auto`` runs the fused
    op on the torch backend: no fused kernel, the composition, equal (float64) to the
    composition through the unfold spec; under ``torch.compile(fullgraph=True)`` Inductor
    decomposes forward and backward into the torch backend's taps and runs none of its eager
    code (``aot_eager_decomp_partition``: the decomposed graph without generated code)."""
    monkeypatch.setattr(_numba_cpu, "can_run", lambda d, t, explicit: "is not importable (test)")
    operands, stride, padding, dilation = make_fused_case(case)
    k = case[6]
    assert not fused_kernel_runs(operands[0], case[2])
    grad = torch.randn(case[0], case[1], *operands[1].shape[2:], dtype=torch.float64)
    want = composed_with_grads(operands, k, stride, padding, dilation, grad)

    def fused(*tensors):
        return fused_involution2d(*tensors, k, stride, padding, dilation)

    eager = _fused_step(fused, operands, grad)
    assert "numba_cpu is not importable (test)" in notes()[0]
    calls = []
    for name in ("forward", "grad_input", "grad_kernel"):
        original = getattr(_torch, name)
        monkeypatch.setattr(_torch, name, lambda *a, f=original: calls.append(f) or f(*a))
    torch._dynamo.reset()
    compiled_fn = torch.compile(fused, fullgraph=True, backend="aot_eager_decomp_partition")
    compiled = _fused_step(compiled_fn, operands, grad)
    names = ("out", "grad_input", "grad_hidden", "grad_weight", "grad_bias")
    for got in (eager, compiled):
        for name, actual, expected in zip(names, got, want, strict=True):
            torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10, msg=name)
    assert calls == []


def test_default_layer_on_cpu_half_precision_runs_the_fused_op_on_torch():
    """bfloat16 CPU tensors (no Numba backend runs them): the default layer (fused op, auto)
    runs on the torch backend, eager and compiled with fullgraph=True, and agrees with the
    float64 layer within bfloat16's precision."""
    torch.manual_seed(0)
    layer = Involution2d(32, kernel_size=3).eval()
    x = torch.randn(2, 32, 7, 7)
    want = layer.double()(x.double())
    layer = layer.to(torch.bfloat16)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager_decomp_partition")
    for fn in (layer, compiled):
        got = fn(x.to(torch.bfloat16))
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.double(), want, rtol=0.05, atol=0.1)
