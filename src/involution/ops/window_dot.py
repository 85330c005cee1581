"""Windowed dot product: the logits of local self-attention, on the involution ops.

    logits[n, g, u, v, i, j] = sum_{c in group g} query[n, c, i, j] * key[n, c, i*s - p + u*d, j*s - p + v*d]

(zero outside the image). This is exactly involution's ``grad_kernel`` with ``grad_out = query``
and ``input = key``, and its adjoint (the scatter of ``query`` by ``weights`` onto the key grid) is
involution's ``grad_input`` with ``grad_out = query`` and ``kernel = weights``. So the two public
functions here only check their arguments and call the registered ops of
``involution.ops._library``::

    window_dot(query, key, ...)                    -> involution::involution2d_grad_kernel
    window_dot_key_grad(query, weights, key_size)  -> involution::involution2d_grad_input

which bring their fake impls, autograd (closed under differentiation, so double backward works),
autocast rules, FLOP formulas and backends (``reference``, ``numba_cpu``, ``numba_cuda``;
``auto`` is resolved by ``resolve_backend``, as for ``involution2d``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from involution.ops._library import autocast_dtype, resolve_backend
from involution.reference import output_size

BACKENDS = ("auto", "reference", "numba_cpu", "numba_cuda")

__all__ = ["BACKENDS", "window_dot", "window_dot_key_grad"]


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


def _backend(backend: str, query: Tensor) -> str:
    """The concrete backend, for the dtype the op computes in (after its autocast rule)."""
    dtype = autocast_dtype(query.device.type, query.dtype) or query.dtype
    return resolve_backend(backend, query.device, dtype)


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
    return torch.ops.involution.involution2d_grad_kernel(
        query, key, kernel_size, groups, stride, padding, dilation, _backend(backend, query)
    )


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
    return torch.ops.involution.involution2d_grad_input(
        query, weights, key_size, stride, padding, dilation, _backend(backend, query)
    )
