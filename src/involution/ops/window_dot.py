"""Windowed dot product: the logits of local self-attention, built on the involution kernels.

    logits[n, g, u, v, i, j] = sum_{c in group g} query[n, c, i, j] * key[n, c, i*s - p + u*d, j*s - p + v*d]

(zero outside the image). This is exactly involution's ``grad_kernel`` with ``grad_out = query`` and
``input = key``; its gradients are again the involution access pattern:

- d/d query = the involution forward of ``key`` with the upstream gradient as kernel;
- d/d key   = the involution ``grad_input`` of ``query`` with the upstream gradient as kernel.

So local self-attention (logits here, aggregation = ``involution2d`` with heads as groups) runs on
whatever backend involution runs on. Two ops are registered with ``torch.library``:

- ``involution::window_dot(query, key, ...) -> [N, G, Kh, Kw, Ho, Wo]``
- ``involution::window_dot_key_grad(query, weights, key_size, ...) -> [N, C, H, W]`` (the scatter of
  ``query`` by ``weights`` onto the key grid: involution's grad_input). It is needed as a separate op
  so that the backward of ``window_dot`` is itself made of registered ops (``torch.compile`` traces
  it) and so that double backward closes over the three ops.

Both have fake (meta) impls, autograd, a float32 autocast rule and a FLOP formula
(``torch.utils.flop_counter``). Backends: ``reference`` (unfold/fold, the spec), ``numba_cpu`` and
``numba_cuda`` (the kernels in ``involution.kernels``), ``auto`` (by device; the reference where a
Numba kernel is not available).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from involution.reference import output_size

BACKENDS = ("auto", "reference", "numba_cpu", "numba_cuda")

__all__ = [
    "BACKENDS",
    "window_dot",
    "window_dot_key_grad",
    "window_dot_reference",
    "key_grad_reference",
]


# --------------------------------------------------------------------------------------------
# The spec (unfold / fold). Differentiable with plain autograd; used by backend="reference".
# --------------------------------------------------------------------------------------------


def window_dot_reference(
    query: Tensor,
    key: Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> Tensor:
    """logits [N, G, Kh, Kw, Ho, Wo] of ``query`` [N, C, Ho, Wo] against ``key`` [N, C, H, W]."""
    n, c, ho, wo = query.shape
    kh, kw = kernel_size
    cols = F.unfold(
        key, (kh, kw), dilation=tuple(dilation), padding=tuple(padding), stride=tuple(stride)
    )
    cols = cols.view(n, groups, c // groups, kh * kw, ho, wo)
    logits = (cols * query.view(n, groups, c // groups, 1, ho, wo)).sum(dim=2)
    return logits.view(n, groups, kh, kw, ho, wo)


def key_grad_reference(
    query: Tensor,
    weights: Tensor,
    key_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Tensor:
    """out[n, c, y, x] = sum over (u, v, i, j) with (i*s-p+u*d, j*s-p+v*d) = (y, x) of
    weights[n, g(c), u, v, i, j] * query[n, c, i, j]   (involution's grad_input)."""
    n, c, ho, wo = query.shape
    _, g, kh, kw, _, _ = weights.shape
    cols = query.view(n, g, c // g, 1, ho, wo) * weights.reshape(n, g, 1, kh * kw, ho, wo)
    cols = cols.reshape(n, c * kh * kw, ho * wo)
    return F.fold(
        cols,
        tuple(key_size),
        (kh, kw),
        dilation=tuple(dilation),
        padding=tuple(padding),
        stride=tuple(stride),
    )


# --------------------------------------------------------------------------------------------
# Backend dispatch. The Numba kernels live in ``involution.kernels.{cpu,cuda}`` (owned by the
# operator work); they are looked up lazily so that this module imports without them.
# --------------------------------------------------------------------------------------------


class _Impl(NamedTuple):
    """window_dot(query, key, kernel_size, stride, padding, dilation, groups) and
    key_grad(query, weights, key_size, stride, padding, dilation), on tensors."""

    window_dot: Callable[..., Tensor]
    key_grad: Callable[..., Tensor]


_REFERENCE = _Impl(window_dot_reference, key_grad_reference)


_NUMBA_CPU_DTYPES = (torch.float32, torch.float64)


def _numba_cpu_impl(kernels) -> _Impl:
    """Adapters to ``involution.kernels.cpu``.

    ``grad_kernel(grad_out, x, grad_k, stride, padding, dilation, layout)`` is
    window_dot(query=grad_out, key=x); ``grad_input(grad_out, kernel, grad_x, ...)`` is
    key_grad(query=grad_out, weights=kernel). The kernels' layout policy (``prefer_nhwc``) picks
    NCHW or NHWC feature maps; float16/bfloat16 are computed in float32.
    """

    def layout(channels_per_group: int, width: int, tensor: Tensor) -> str:
        prefer = getattr(kernels, "prefer_nhwc", None)
        if prefer is None:
            return "nchw"
        channels_last = tensor.is_contiguous(memory_format=torch.channels_last)
        return "nhwc" if prefer(channels_per_group, width, channels_last) else "nchw"

    def maps(tensor: Tensor, kind: str) -> Tensor:
        """A feature map in the kernel's layout, C-contiguous."""
        return tensor.permute(0, 2, 3, 1).contiguous() if kind == "nhwc" else tensor.contiguous()

    def window_dot(query, key, kernel_size, stride, padding, dilation, groups):
        dtype = query.dtype
        if dtype not in _NUMBA_CPU_DTYPES:
            query, key = query.float(), key.float()
        n, c, ho, wo = query.shape
        kind = layout(c // groups, wo, key)
        out = query.new_empty((n, groups, kernel_size[0], kernel_size[1], ho, wo))
        kernels.grad_kernel(
            maps(query, kind).detach().numpy(),
            maps(key, kind).detach().numpy(),
            out.numpy(),
            stride=tuple(stride),
            padding=tuple(padding),
            dilation=tuple(dilation),
            layout=kind,
        )
        return out.to(dtype)

    def key_grad(query, weights, key_size, stride, padding, dilation):
        dtype = query.dtype
        if dtype not in _NUMBA_CPU_DTYPES:
            query, weights = query.float(), weights.float()
        n, c, ho, wo = query.shape
        groups = weights.shape[1]
        kind = layout(c // groups, wo, query)
        shape = (
            (n, key_size[0], key_size[1], c) if kind == "nhwc" else (n, c, key_size[0], key_size[1])
        )
        out = query.new_empty(shape)
        kernels.grad_input(
            maps(query, kind).detach().numpy(),
            weights.detach().contiguous().numpy(),
            out.numpy(),
            stride=tuple(stride),
            padding=tuple(padding),
            dilation=tuple(dilation),
            layout=kind,
        )
        if kind == "nhwc":
            out = out.permute(0, 3, 1, 2).contiguous()
        return out.to(dtype)

    return _Impl(window_dot, key_grad)


# CUDA storage kinds of ``involution.kernels.cuda`` (bfloat16 travels as int16 bit patterns).
_CUDA_KINDS = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def cuda_sizes(
    query_shape: Sequence[int],
    key_size: Sequence[int],
    groups: int,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, ...]:
    """The 15 size arguments of the CUDA kernels: n, c, h, w, g, kh, kw, ho, wo, sh, sw, ph, pw, dh, dw."""
    n, c, ho, wo = query_shape
    return (
        n, c, key_size[0], key_size[1], groups, kernel_size[0], kernel_size[1], ho, wo,
        *stride, *padding, *dilation,
    )  # fmt: skip


def cuda_launch(
    kernels, name: str, kind: str, arrays: Sequence[object], sizes: Sequence[int], stream=0
) -> None:
    """Launch kernel ``name`` ('grad_kernel' or 'grad_input') of ``involution.kernels.cuda`` on
    1-D device arrays (a, b, out) with the 15 ``sizes``; one thread per work item."""
    n, c, h, w, g, kh, kw, ho, wo = sizes[:9]
    total = kernels.work_items(name, n, c, h, w, g, kh, kw, ho, wo)
    if total == 0:
        return
    grid, block = kernels.launch_config(total)
    kernels.get_kernels(kind)[name][grid, block, stream](*arrays, *(int(v) for v in sizes))


def _numba_cuda_impl(kernels) -> _Impl:
    """Adapters to ``involution.kernels.cuda``: torch tensors go in through
    ``__cuda_array_interface__`` (flattened), on torch's current stream of the tensor's device."""
    from numba import cuda

    def run(name: str, a: Tensor, b: Tensor, out: Tensor, sizes: tuple[int, ...]) -> None:
        kind = _CUDA_KINDS[a.dtype]

        def device_array(t: Tensor):
            flat = t.detach().reshape(-1)  # contiguous: a view
            # sync=False: the launch below is on the stream torch exported, so it is ordered
            return cuda.as_cuda_array(
                flat.view(torch.int16) if kind == "bfloat16" else flat, sync=False
            )

        index = a.device.index if a.device.index is not None else torch.cuda.current_device()
        with cuda.gpus[index]:
            stream = cuda.external_stream(torch.cuda.current_stream(a.device).cuda_stream)
            cuda_launch(kernels, name, kind, [device_array(t) for t in (a, b, out)], sizes, stream)

    def window_dot(query, key, kernel_size, stride, padding, dilation, groups):
        n, _, ho, wo = query.shape
        out = query.new_empty((n, groups, kernel_size[0], kernel_size[1], ho, wo))
        sizes = cuda_sizes(
            query.shape, key.shape[-2:], groups, kernel_size, stride, padding, dilation
        )
        run("grad_kernel", query, key, out, sizes)
        return out

    def key_grad(query, weights, key_size, stride, padding, dilation):
        n, c = query.shape[:2]
        out = query.new_empty((n, c, key_size[0], key_size[1]))
        sizes = cuda_sizes(
            query.shape, key_size, weights.shape[1], weights.shape[2:4], stride, padding, dilation
        )
        run("grad_input", query, weights, out, sizes)
        return out

    return _Impl(window_dot, key_grad)


@functools.cache
def _numba_impl(device_type: str) -> _Impl | None:
    """The Numba implementation for ``device_type`` ('cpu' or 'cuda'), or None when unavailable
    (Numba, the CUDA driver or the kernels missing)."""
    try:
        kernels = importlib.import_module(f"involution.kernels.{device_type}")
    except Exception:
        return None
    if device_type == "cpu":
        if not all(callable(getattr(kernels, f, None)) for f in ("grad_kernel", "grad_input")):
            return None
        return _numba_cpu_impl(kernels)
    needed = ("get_kernels", "launch_config", "work_items")
    if not all(callable(getattr(kernels, f, None)) for f in needed):
        return None
    try:
        from numba import cuda

        if not cuda.is_available():
            return None
    except Exception:
        return None
    return _numba_cuda_impl(kernels)


def _resolve(backend: str, device: torch.device) -> _Impl:
    if backend == "reference":
        return _REFERENCE
    if backend == "auto":
        impl = _numba_impl(device.type) if device.type in ("cpu", "cuda") else None
        return impl or _REFERENCE
    wanted = {"numba_cpu": "cpu", "numba_cuda": "cuda"}[backend]
    if device.type != wanted:
        raise ValueError(f"backend {backend!r} needs {wanted} tensors, got {device.type}")
    impl = _numba_impl(wanted)
    if impl is None:
        raise RuntimeError(
            f"backend {backend!r} is not available: involution.kernels.{wanted} has no usable "
            "forward/grad_input/grad_kernel kernels (use backend='reference' or 'auto')"
        )
    return impl


# --------------------------------------------------------------------------------------------
# Registered ops.
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("involution::window_dot", mutates_args=())
def _window_dot_op(
    query: Tensor,
    key: Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    backend: str,
) -> Tensor:
    impl = _resolve(backend, query.device)
    return impl.window_dot(
        query.contiguous(), key.contiguous(), kernel_size, stride, padding, dilation, groups
    )


@_window_dot_op.register_fake
def _(query, key, kernel_size, stride, padding, dilation, groups, backend):
    n, _, ho, wo = query.shape
    return query.new_empty((n, groups, kernel_size[0], kernel_size[1], ho, wo))


@torch.library.custom_op("involution::window_dot_key_grad", mutates_args=())
def _key_grad_op(
    query: Tensor,
    weights: Tensor,
    key_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    backend: str,
) -> Tensor:
    impl = _resolve(backend, query.device)
    return impl.key_grad(
        query.contiguous(), weights.contiguous(), key_size, stride, padding, dilation
    )


@_key_grad_op.register_fake
def _(query, weights, key_size, stride, padding, dilation, backend):
    n, c = query.shape[:2]
    return query.new_empty((n, c, key_size[0], key_size[1]))


def _aggregate(input: Tensor, weights: Tensor, stride, padding, dilation, backend: str) -> Tensor:
    """out[n,c,i,j] = sum_uv weights[n,g(c),u,v,i,j] * input[n,c,i*s-p+u*d, j*s-p+v*d]: involution2d."""
    from involution.ops import involution2d  # the public op (autograd, fake impl, backends)

    return involution2d(input, weights, tuple(stride), tuple(padding), tuple(dilation), backend)


def _window_dot_setup(ctx, inputs, output) -> None:
    query, key, kernel_size, stride, padding, dilation, groups, backend = inputs
    ctx.save_for_backward(query, key)
    ctx.args = (tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), groups, backend)


def _window_dot_backward(ctx, grad: Tensor):
    query, key = ctx.saved_tensors
    _, stride, padding, dilation, _, backend = ctx.args
    grad = grad.contiguous()
    grad_query = grad_key = None
    if ctx.needs_input_grad[0]:
        grad_query = _aggregate(key, grad, stride, padding, dilation, backend)
    if ctx.needs_input_grad[1]:
        grad_key = _key_grad_op(
            query, grad, tuple(key.shape[-2:]), stride, padding, dilation, backend
        )
    return grad_query, grad_key, None, None, None, None, None, None


def _key_grad_setup(ctx, inputs, output) -> None:
    query, weights, key_size, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(query, weights)
    ctx.args = (tuple(stride), tuple(padding), tuple(dilation), backend)


def _key_grad_backward(ctx, grad: Tensor):
    query, weights = ctx.saved_tensors
    stride, padding, dilation, backend = ctx.args
    grad = grad.contiguous()
    kernel_size = tuple(weights.shape[2:4])
    grad_query = grad_weights = None
    if ctx.needs_input_grad[0]:
        grad_query = _aggregate(grad, weights, stride, padding, dilation, backend)
    if ctx.needs_input_grad[1]:
        grad_weights = _window_dot_op(
            query, grad, kernel_size, stride, padding, dilation, weights.shape[1], backend
        )
    return grad_query, grad_weights, None, None, None, None, None


_window_dot_op.register_autograd(_window_dot_backward, setup_context=_window_dot_setup)
_key_grad_op.register_autograd(_key_grad_backward, setup_context=_key_grad_setup)

# Under AMP the logits feed a softmax: compute them in float32 (the kernels accumulate in the
# input dtype). The aggregation (involution2d) keeps its own autocast rule.
for _device_type in ("cpu", "cuda"):
    torch.library.register_autocast("involution::window_dot", _device_type, torch.float32)
    torch.library.register_autocast("involution::window_dot_key_grad", _device_type, torch.float32)


# FLOP formulas (multiply-add = 2 FLOPs, the torch.utils.flop_counter convention): every output
# element of window_dot is a dot product of C/G terms; key_grad does N*C*Kh*Kw*Ho*Wo multiply-adds.
def _register_flops() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.involution.window_dot)
    def _(query_shape, key_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
        n, c, ho, wo = query_shape
        return 2 * n * c * kernel_size[0] * kernel_size[1] * ho * wo

    @register_flop_formula(torch.ops.involution.window_dot_key_grad)
    def _(query_shape, weights_shape, *args, out_shape=None, **kwargs) -> int:
        n, c, ho, wo = query_shape
        return 2 * n * c * weights_shape[2] * weights_shape[3] * ho * wo


_register_flops()


# --------------------------------------------------------------------------------------------
# Public functions.
# --------------------------------------------------------------------------------------------


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _check_common(query: Tensor, other: Tensor, other_name: str) -> None:
    if query.dim() != 4:
        raise ValueError(f"query must be 4-D [N,C,Ho,Wo], got shape {tuple(query.shape)}")
    if other.device != query.device or other.dtype != query.dtype:
        raise ValueError(
            f"query and {other_name} must share device and dtype, got "
            f"{query.device}/{query.dtype} and {other.device}/{other.dtype}"
        )


def window_dot(
    query: Tensor,
    key: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    backend: str = "auto",
) -> Tensor:
    """Windowed dot product of ``query`` [N,C,Ho,Wo] with ``key`` [N,C,H,W] -> [N,G,Kh,Kw,Ho,Wo].

    ``padding`` defaults to ``dilation*(K-1)//2``; (Ho, Wo) must follow the convolution formula
    for (H, W), exactly as the kernel map of ``involution2d`` does. ``groups`` (= attention heads)
    splits the C channels into G groups of C/G that are summed over.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kernel_size = _pair(kernel_size, "kernel_size")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if padding is None:
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel_size))
    padding = _pair(padding, "padding")
    _check_common(query, key, "key")
    if key.dim() != 4:
        raise ValueError(f"key must be 4-D [N,C,H,W], got shape {tuple(key.shape)}")
    n, c, ho, wo = query.shape
    if key.shape[:2] != query.shape[:2]:
        raise ValueError(
            f"query {tuple(query.shape)} and key {tuple(key.shape)} must agree in N and C"
        )
    if not isinstance(groups, int) or groups < 1 or c % groups:
        raise ValueError(f"groups={groups!r} must divide the {c} channels")
    expected = tuple(
        output_size(key.shape[2 + a], kernel_size[a], stride[a], padding[a], dilation[a])
        for a in (0, 1)
    )
    if (ho, wo) != expected:
        raise ValueError(
            f"query spatial size {(ho, wo)} must be the output size {expected} of key size "
            f"{tuple(key.shape[2:])} with kernel {kernel_size}, stride {stride}, padding {padding}, "
            f"dilation {dilation}"
        )
    return _window_dot_op(query, key, kernel_size, stride, padding, dilation, groups, backend)


def window_dot_key_grad(
    query: Tensor,
    weights: Tensor,
    key_size: Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] = 1,
    backend: str = "auto",
) -> Tensor:
    """Scatter ``query`` [N,C,Ho,Wo] by ``weights`` [N,G,Kh,Kw,Ho,Wo] onto a key grid ``key_size``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    key_size = _pair(tuple(key_size), "key_size")
    _check_common(query, weights, "weights")
    if weights.dim() != 6:
        raise ValueError(f"weights must be 6-D [N,G,Kh,Kw,Ho,Wo], got shape {tuple(weights.shape)}")
    kh, kw = weights.shape[2], weights.shape[3]
    if padding is None:
        padding = (dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2)
    padding = _pair(padding, "padding")
    n, c, ho, wo = query.shape
    g = weights.shape[1]
    if g < 1 or c % g:
        raise ValueError(f"weights groups G={g} must divide the {c} query channels")
    expected = tuple(
        output_size(key_size[a], (kh, kw)[a], stride[a], padding[a], dilation[a]) for a in (0, 1)
    )
    if (ho, wo) != expected or tuple(weights.shape) != (n, g, kh, kw, ho, wo):
        raise ValueError(
            f"query {tuple(query.shape)} / weights {tuple(weights.shape)} do not fit key size "
            f"{key_size} (expected output size {expected})"
        )
    return _key_grad_op(query, weights, key_size, stride, padding, dilation, backend)
