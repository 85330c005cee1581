"""The one argument check of the public ops (``involution2d``, ``window_dot``,
``window_dot_key_grad``): backend name, tensor types and ranks, dtypes and devices, and the
(height, width) pairs of kernel size, stride, padding and dilation, each error one line naming the
argument and what is allowed. What is particular to an op (how its shapes relate) stays with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from involution.ops import _backends

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def output_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int) -> int:
    """Convolution output-size formula."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def autocast_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the ops' autocast rule casts a ``dtype`` operand to, or None when autocast is
    off: like convolutions on CUDA (the autocast dtype, float64 kept); float32 on CPU, where the
    Numba kernels compute in float32/float64."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    if dtype == torch.float64:
        return dtype
    return torch.get_autocast_dtype("cuda") if device_type == "cuda" else torch.float32


def pair(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    """``value`` as a (height, width) pair of ints >= ``minimum``."""
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


class OpArgs(NamedTuple):
    """Checked arguments: (height, width) pairs and the concrete backend."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    backend: str

    def output_size(self, size: Sequence[int]) -> tuple[int, int]:
        """(Ho, Wo) of an input of spatial ``size`` (H, W)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
        )
        return output_size(size[0], kh, sh, ph, dh), output_size(size[1], kw, sw, pw, dw)


def normalize(
    tensors: Sequence[tuple[str, object, str]],
    kernel_size: int | Sequence[int] | None,
    stride: int | Sequence[int],
    padding: int | Sequence[int] | None,
    dilation: int | Sequence[int],
    backend: str,
) -> OpArgs:
    """Check the arguments every op shares and resolve the backend.

    ``tensors``: (name, value, dims) per tensor operand, dims like "[N,C,H,W]" (its rank is the
    number of dims); the first sets the device and dtype the others must share (after autocast's
    cast). ``kernel_size`` None: the (KH, KW) of the 6-D operand. ``padding`` None:
    ``dilation*(K-1)//2`` per axis. Raises a one-line TypeError/ValueError naming the argument.
    """
    _backends.check_name(backend)
    for name, value, dims in tensors:
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        rank = dims.count(",") + 1
        if value.dim() != rank:
            raise ValueError(f"{name} must be {rank}-D {dims}, got shape {tuple(value.shape)}")
    (first, x, _), others = tensors[0], tensors[1:]
    if x.dtype not in FLOATING:
        raise TypeError(f"{first} dtype must be one of {FLOATING}, got {x.dtype}")
    # Under torch.autocast the ops' autocast rule casts every operand first (see _library).
    dtype = autocast_dtype(x.device.type, x.dtype) or x.dtype
    for name, t, _ in others:
        if t.device != x.device:
            raise ValueError(f"{name} must be on the {first}'s device {x.device}, got {t.device}")
        if (autocast_dtype(x.device.type, t.dtype) or t.dtype) != dtype:
            raise TypeError(f"{name} dtype must equal {first} dtype {x.dtype}, got {t.dtype}")
    stride = pair(stride, "stride", 1)
    dilation = pair(dilation, "dilation", 1)
    if kernel_size is None:
        kernel = [t for _, t, _ in tensors if t.dim() == 6][0]
        kernel_size = (kernel.shape[2], kernel.shape[3])
        if min(kernel_size) < 1:
            raise ValueError(f"kernel size must be >= 1, got kernel shape {tuple(kernel.shape)}")
    else:
        kernel_size = pair(kernel_size, "kernel_size", 1)
    if padding is None:
        padding = (
            dilation[0] * (kernel_size[0] - 1) // 2,
            dilation[1] * (kernel_size[1] - 1) // 2,
        )
    padding = pair(padding, "padding", 0)
    resolved = _backends.resolve_backend(backend, x.device, dtype)
    return OpArgs(kernel_size, stride, padding, dilation, resolved)
