"""Windowed dot product: the logits of local self-attention, on the involution ops.

    logits[n, g, u, v, i, j] = sum_{c in group g} query[n, c, i, j]
                                                  * key[n, c, i*s - p + u*d, j*s - p + v*d]

(zero outside the image). This is exactly involution's ``grad_kernel`` with ``grad_out = query``
and ``input = key``, and its adjoint (the scatter of ``query`` by ``weights`` onto the key grid) is
involution's ``grad_input`` with ``grad_out = query`` and ``kernel = weights``. So the two public
functions here only check their arguments (with ``involution2d``'s own check,
``_args.normalize``) and call the registered ops of ``involution.ops._library``::

    window_dot(query, key, ...)                    -> involution::involution2d_grad_kernel
    window_dot_key_grad(query, weights, key_size)  -> involution::involution2d_grad_input

which bring their fake impls, autograd (closed under differentiation, so double backward works),
autocast rules, FLOP formulas and backends (those of ``involution2d``, ``auto`` included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from involution.ops._args import normalize, pair

__all__ = ["window_dot", "window_dot_key_grad"]


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
    """Windowed dot product of each ``query`` pixel with the ``key`` pixels of its KH x KW window.

    ``logits[n,g,u,v,i,j] = sum_{c in group g} query[n,c,i,j] * key[n,c,i*s-p+u*d, j*s-p+v*d]``
    with zero outside the image: the content logits of local self-attention (``groups`` = heads),
    and the kernel gradient of ``involution2d``. Differentiable (twice) in both operands.

    Args:
        query (Tensor[N, C, Ho, Wo]): one query per output pixel, any floating dtype.
        key (Tensor[N, C, H, W]): the keys; same N, C, device and dtype as ``query``.
        kernel_size (int or Tuple[int, int]): the window (KH, KW), >= 1.
        stride (int or Tuple[int, int]): step between windows (>= 1). Default: 1.
        padding (int or Tuple[int, int], optional): zero padding of ``key`` (>= 0). Default:
            None, meaning ``dilation * (K - 1) // 2`` per axis.
        dilation (int or Tuple[int, int]): spacing between window taps (>= 1). Default: 1.
        groups (int): channel groups (attention heads) summed over separately; must divide C.
            Default: 1.
        backend (str): as for ``involution2d``: "auto" (default), "numba_cuda", "numba_cpu",
            "torch" or "reference".

    Returns:
        Tensor[N, G, KH, KW, Ho, Wo]: the dot products, laid out as an involution kernel.

    Raises:
        TypeError: a non-tensor operand, a non-floating or mismatched dtype, a size argument that
            is not an int or a pair of ints, or a dtype the backend does not run.
        ValueError: a wrong rank or shape ((Ho, Wo) must follow the convolution formula for
            (H, W)), groups that do not divide C, a negative padding, a stride or dilation below
            1, an unknown backend, or a backend that does not run the tensors' device. Every
            message is one line naming the argument.

    Example:
        >>> query, key = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
        >>> window_dot(query, key, 3, groups=2).shape
        torch.Size([2, 2, 3, 3, 6, 6])
    """
    args = normalize(
        [("query", query, "[N,C,Ho,Wo]"), ("key", key, "[N,C,H,W]")],
        kernel_size,
        stride,
        padding,
        dilation,
        backend,
    )
    n, c, ho, wo = query.shape
    if key.shape[:2] != query.shape[:2]:
        raise ValueError(
            f"query {tuple(query.shape)} and key {tuple(key.shape)} must agree in N and C"
        )
    if not isinstance(groups, int) or groups < 1 or c % groups:
        raise ValueError(f"groups={groups!r} must divide the {c} channels")
    expected = args.output_size(key.shape[2:])
    if (ho, wo) != expected:
        raise ValueError(
            f"query spatial size {(ho, wo)} must be the output size {expected} of key size "
            f"{tuple(key.shape[2:])} with kernel {args.kernel_size}, stride {args.stride}, "
            f"padding {args.padding}, dilation {args.dilation}"
        )
    return torch.ops.involution.involution2d_grad_kernel(
        query,
        key,
        args.kernel_size,
        groups,
        args.stride,
        args.padding,
        args.dilation,
        args.backend,
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
    """Scatter ``query`` by ``weights`` onto the key grid: the adjoint of ``window_dot`` in ``key``.

    Args:
        query (Tensor[N, C, Ho, Wo]): as for ``window_dot``.
        weights (Tensor[N, G, KH, KW, Ho, Wo]): one weight per window tap; G must divide C.
        key_size (Tuple[int, int]): (H, W) of the key grid.
        stride, padding, dilation, backend: as for ``window_dot``.

    Returns:
        Tensor[N, C, H, W]: ``out[n,c,y,x]`` = the sum of ``weights * query`` over the windows
        that read key pixel (y, x).

    Raises:
        TypeError, ValueError: as ``window_dot``, one line naming the argument.

    Example:
        >>> query, weights = torch.randn(2, 8, 6, 6), torch.randn(2, 2, 3, 3, 6, 6)
        >>> window_dot_key_grad(query, weights, (6, 6)).shape
        torch.Size([2, 8, 6, 6])
    """
    args = normalize(
        [("query", query, "[N,C,Ho,Wo]"), ("weights", weights, "[N,G,KH,KW,Ho,Wo]")],
        None,
        stride,
        padding,
        dilation,
        backend,
    )
    key_size = pair(tuple(key_size), "key_size", 1)
    n, c, ho, wo = query.shape
    g, (kh, kw) = weights.shape[1], args.kernel_size
    if g < 1 or c % g:
        raise ValueError(f"weights groups G={g} must divide the {c} query channels")
    expected = args.output_size(key_size)
    if (ho, wo) != expected or tuple(weights.shape) != (n, g, kh, kw, ho, wo):
        raise ValueError(
            f"query {tuple(query.shape)} / weights {tuple(weights.shape)} do not fit key size "
            f"{key_size} (expected output size {expected})"
        )
    return torch.ops.involution.involution2d_grad_input(
        query, weights, key_size, args.stride, args.padding, args.dilation, args.backend
    )
