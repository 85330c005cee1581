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
    """None for CUDA tensors of ``DTYPES``; CPU tensors too under the simulator, when asked for
    by name (``auto`` never picks a simulated backend), else why not."""
    simulated = explicit and device.type == "cpu" and simulator_enabled()
    if device.type != "cuda" and not simulated:
        return f"needs CUDA tensors (device 'cuda'), got device {device}"
    if dtype not in DTYPES:
        return f"supports dtypes {DTYPES}, got {dtype}"
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
