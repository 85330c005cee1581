"""The involution operator: ``involution2d`` and its backends.

``involution2d(input [N,C,H,W], kernel [N,G,KH,KW,Ho,Wo], stride, padding, dilation, backend)``::

    out[n,c,i,j] = sum_{u,v} kernel[n, c//(C/G), u, v, i, j] * input[n, c, i*s-p+u*d, j*s-p+v*d]

(zero outside the image; ``padding`` defaults to ``dilation*(K-1)//2``; Ho, Wo follow the
convolution formula.) Arguments are checked here, in plain Python, then the call goes to one
``torch.library`` custom op, ``torch.ops.involution.involution2d``, whose gradients are two more
ops (``involution2d_grad_input``, ``involution2d_grad_kernel``); see ``involution.ops._library``.

Backends (``BACKENDS``):

- ``"reference"``: unfold/fold (``involution.reference``), any device, any floating dtype; the spec.
- ``"numba_cpu"``: the parallel Numba kernels of ``involution.kernels.cpu``; float32 and float64.
- ``"numba_cuda"``: the numba-cuda kernels of ``involution.kernels.cuda`` on torch's CUDA memory and
  current stream; float32, float16, bfloat16 (accumulating in float32) and float64.
- ``"auto"``: ``numba_cuda`` for CUDA tensors, ``numba_cpu`` for CPU float32/float64, otherwise
  ``reference`` (e.g. CPU half precision, meta tensors, other devices).

The output has the memory format of ``input`` (channels_last in, channels_last out, like
convolutions); the gradient of ``input`` has the memory format of the incoming gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from involution.ops import _library
from involution.ops._library import CPU_DTYPES, CUDA_DTYPES, autocast_dtype, resolve_backend
from involution.reference import involution2d_reference, output_size

__all__ = [
    "BACKENDS",
    "CPU_DTYPES",
    "CUDA_DTYPES",
    "involution2d",
    "involution2d_reference",
    "output_size",
    "resolve_backend",
]

BACKENDS = ("auto", "reference", "numba_cpu", "numba_cuda")

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _pair(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    pair = (
        (value, value)
        if isinstance(value, int)
        else tuple(value)
        if isinstance(value, Sequence)
        else None
    )
    if (
        pair is None
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair  # type: ignore[return-value]


def involution2d(
    input: Tensor,
    kernel: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] = 1,
    backend: str = "auto",
) -> Tensor:
    """Involution of ``input`` [N,C,H,W] with per-pixel ``kernel`` [N,G,KH,KW,Ho,Wo] -> [N,C,Ho,Wo].

    ``stride``, ``padding`` and ``dilation`` are ints or (height, width) pairs; ``padding=None``
    means ``dilation*(K-1)//2`` per axis. The C channels split into G groups of C/G that share
    the group's kernel. Raises ``TypeError``/``ValueError`` naming the offending argument.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(kernel, Tensor):
        raise TypeError(f"kernel must be a torch.Tensor, got {type(kernel).__name__}")
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D [N,C,H,W], got shape {tuple(input.shape)}")
    if kernel.dim() != 6:
        raise ValueError(f"kernel must be 6-D [N,G,KH,KW,Ho,Wo], got shape {tuple(kernel.shape)}")
    if input.dtype not in _FLOATING:
        raise TypeError(f"input dtype must be one of {_FLOATING}, got {input.dtype}")
    if kernel.device != input.device:
        raise ValueError(
            f"kernel must be on the input's device {input.device}, got {kernel.device}"
        )
    # Under torch.autocast the op's autocast rule casts both operands first (see _library).
    dtype = autocast_dtype(input.device.type, input.dtype) or input.dtype
    kernel_dtype = autocast_dtype(input.device.type, kernel.dtype) or kernel.dtype
    if kernel_dtype != dtype:
        raise TypeError(f"kernel dtype must equal input dtype {input.dtype}, got {kernel.dtype}")
    stride = _pair(stride, "stride", 1)
    dilation = _pair(dilation, "dilation", 1)
    n, c, h, w = input.shape
    g, kh, kw = kernel.shape[1], kernel.shape[2], kernel.shape[3]
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel size must be >= 1, got kernel shape {tuple(kernel.shape)}")
    if padding is None:
        padding = (dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2)
    padding = _pair(padding, "padding", 0)
    if g < 1 or c % g:
        raise ValueError(
            f"kernel groups G={g} (kernel.shape[1]) must divide the input channels C={c}"
        )
    ho = output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = output_size(w, kw, stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(
            f"input spatial size {(h, w)} is too small for kernel {(kh, kw)} with padding {padding} "
            f"and dilation {dilation}: output size would be {(ho, wo)}"
        )
    expected = (n, g, kh, kw, ho, wo)
    if tuple(kernel.shape) != expected:
        raise ValueError(
            f"kernel shape must be (N, G, KH, KW, Ho, Wo) = {expected}, got {tuple(kernel.shape)}"
        )
    resolved = resolve_backend(backend, input.device, dtype)
    return _library.involution2d_op(input, kernel, stride, padding, dilation, resolved)
