"""Backend ``numba_cuda``: torch CUDA tensors <-> the numba-cuda kernels of ``kernels.cuda``.

CUDA tensors; float32, float16, bfloat16 (accumulating in float32) and float64; every operand is
computed on contiguous (NCHW) memory.

Tensors are handed to the kernels in place through ``__cuda_array_interface__``
(``numba.cuda.as_cuda_array``, flattened contiguous views; bfloat16 as its int16 bit pattern) and
the kernels are launched on torch's current stream (``numba.cuda.external_stream``), so they order
correctly with the surrounding torch work and with CUDA graphs' capture stream.

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, for tests on machines without a GPU)
the same kernels run as Python on CPU tensors; the simulator copies the NumPy views in and back.
numba-cuda is imported on first use only.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from involution.ops._tracing import run_while_tracing

_KINDS = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
}


@functools.cache
def simulator_enabled() -> bool:
    """Whether numba-cuda runs its CPU simulator (NUMBA_ENABLE_CUDASIM=1 when it was imported)."""
    try:
        from numba.cuda.core import config
    except ImportError:  # pragma: no cover - numba-cuda is a dependency
        return False
    return bool(config.ENABLE_CUDASIM)


NAME = "numba_cuda"
DTYPES = tuple(_KINDS)


def can_run(device: torch.device, dtype: torch.dtype, explicit: bool) -> str | None:
    """None for CUDA tensors of ``DTYPES`` on a GPU numba-cuda can launch kernels on (see
    ``unusable``); CPU tensors too under the simulator, when asked for by name (``auto`` never
    picks a simulated backend), else why not."""
    simulated = explicit and device.type == "cpu" and simulator_enabled()
    if device.type != "cuda" and not simulated:
        return f"needs CUDA tensors (device 'cuda'), got device {device}"
    if dtype not in DTYPES:
        return f"supports dtypes {DTYPES}, got {dtype}"
    return None if simulated else unusable(device.index)


_UNUSABLE: dict[int, str | None] = {}


@run_while_tracing
def unusable(index: int | None) -> str | None:
    """Why numba-cuda cannot launch kernels on CUDA device ``index`` (None: the current one), or
    None when it can: torch built for ROCm/HIP (whose "cuda" devices are AMD GPUs), no driver
    numba-cuda can load, or a one-thread kernel that fails to compile or launch (a GPU, driver or
    toolkit that numba-cuda does not support). Probed once per device and process."""
    if torch.version.hip:
        return f"needs an NVIDIA GPU; this torch runs ROCm/HIP {torch.version.hip}"
    if index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    if index not in _UNUSABLE:
        _UNUSABLE[index] = _probe(index)
    return _UNUSABLE[index]


def _probe(index: int) -> str | None:
    try:
        import numpy as np
        from numba import cuda

        if not cuda.is_available():
            return "found no CUDA driver and GPU it can use (numba.cuda.is_available() is False)"

        @cuda.jit
        def one(out):
            out[0] = 1

        with cuda.gpus[index]:
            out = cuda.to_device(np.zeros(1, dtype=np.int32))
            one[1, 1](out)
            if out.copy_to_host()[0] != 1:
                return f"launched a kernel on cuda:{index} that did not run"
    except Exception as exc:  # noqa: BLE001 - any failure is the reason, in one line
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"cannot launch a kernel on cuda:{index} ({type(exc).__name__}: {first})"
    return None


def grad_out_format(input: Tensor, kernel: Tensor, stride) -> torch.memory_format | None:
    """None: each op makes its operands contiguous itself."""
    return None


def _kernels():
    from involution.kernels import cuda as kernels

    return kernels


def _launch(name: str, arrays: tuple[Tensor, Tensor, Tensor], sizes: tuple[int, ...]) -> None:
    from numba import cuda

    kernels = _kernels()
    kind = _KINDS[arrays[0].dtype]
    kernel = kernels.get_kernels(kind)[name]
    blocks, threads = kernels.launch_config(kernels.work_items(name, *sizes[:9]))
    flat = [a.detach().reshape(-1) for a in arrays]  # all contiguous: views, no copies
    if kind == "bfloat16":
        flat = [a.view(torch.int16) for a in flat]
    if simulator_enabled():
        kernel[blocks, threads](*(a.numpy() for a in flat), *sizes)
        return
    device = arrays[0].device
    with cuda.gpus[device.index if device.index is not None else torch.cuda.current_device()]:
        stream = cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)
        views = [cuda.as_cuda_array(a, sync=False) for a in flat]
        kernel[blocks, threads, stream](*views, *sizes)


def _sizes(n, c, h, w, g, kh, kw, ho, wo, stride, padding, dilation) -> tuple[int, ...]:
    return tuple(int(v) for v in (n, c, h, w, g, kh, kw, ho, wo, *stride, *padding, *dilation))


def forward(input: Tensor, kernel: Tensor, stride, padding, dilation) -> Tensor:
    x = input.contiguous()
    k = kernel.contiguous()
    n, c, h, w = x.shape
    _, g, kh, kw, ho, wo = k.shape
    out = torch.empty((n, c, ho, wo), dtype=x.dtype, device=x.device)
    if out.numel():
        _launch(
            "forward", (x, k, out), _sizes(n, c, h, w, g, kh, kw, ho, wo, stride, padding, dilation)
        )
    return out


def grad_input(grad_out: Tensor, kernel: Tensor, input_size, stride, padding, dilation) -> Tensor:
    go = grad_out.contiguous()
    k = kernel.contiguous()
    n, c, ho, wo = go.shape
    _, g, kh, kw, _, _ = k.shape
    h, w = input_size
    grad = torch.empty((n, c, h, w), dtype=go.dtype, device=go.device)
    if grad.numel():
        _launch(
            "grad_input",
            (go, k, grad),
            _sizes(n, c, h, w, g, kh, kw, ho, wo, stride, padding, dilation),
        )
    return grad


def grad_kernel(
    grad_out: Tensor, input: Tensor, kernel_size, groups, stride, padding, dilation
) -> Tensor:
    go = grad_out.contiguous()
    x = input.contiguous()
    n, c, ho, wo = go.shape
    h, w = x.shape[2], x.shape[3]
    kh, kw = kernel_size
    grad = torch.empty((n, groups, kh, kw, ho, wo), dtype=go.dtype, device=go.device)
    if grad.numel():
        _launch(
            "grad_kernel",
            (go, x, grad),
            _sizes(n, c, h, w, groups, kh, kw, ho, wo, stride, padding, dilation),
        )
    return grad
