"""Backend ``torch``: the op and both gradients as KH*KW shifted multiply-accumulates, in torch.

Any device torch runs (CPU, CUDA, ROCm, MPS, XPU, meta), every floating dtype; the fallback of
``backend="auto"`` wherever no Numba backend runs the tensors. Lean by construction: each tap
(u, v) reads a strided *view* of the input, clipped to the rows and columns whose window tap lies
inside the image (so the zero padding is never materialised either: at RedNet-50's 7x7 maps a
padded copy would hold 3.4x the input), and accumulates into the result in place::

    out[..., i0:i1, j0:j1] += kernel[:, g, u, v, i0:i1, j0:j1] * input[..., y0::s, x0::s]  (per tap)

No unfold, no KH*KW-sized temporary: forward and grad_input allocate nothing but their result
(plus a float32 accumulator for half-precision storage), grad_kernel one output-sized buffer for
the product of each tap before it is reduced over the group's channels (``tests/test_ops_torch.py``
probes all three). Half-precision storage accumulates in float32, like the CUDA kernels (on
the CPU, whose kernels cast mixed dtypes by copying, each tap then also holds its operands in
float32; CPU autocast hands the op float32 anyway).

Under ``torch.compile`` with Inductor the same maths is visible to the compiler: the three ops
of ``involution.ops._library`` stay opaque custom ops for every other backend, but for this one
Inductor's decomposition table gets a functional version of each (forward and grad_kernel read
the zero padding as a ``constant_pad_nd``, which Inductor folds into masked loads; grad_input
places each tap's share with ``slice_scatter``, a masked select), which AOTAutograd applies after
our autograd formula, so Inductor can fuse the taps of the forward, and those of the backward,
into one kernel each (on the CPU it does; tests/test_ops_torch.py checks the forward). The
table is filled when Dynamo first resolves this backend (``_register_decompositions``), so an
eager user never imports Inductor's decompositions.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from involution.ops._formats import memory_format
from involution.ops._tracing import run_while_tracing

NAME = "torch"
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def can_run(device: torch.device, dtype: torch.dtype, explicit: bool) -> str | None:
    """None for every device and floating dtype: views, ``addcmul_`` and ``sum`` run wherever
    torch does."""
    if dtype not in DTYPES:
        return f"supports dtypes {DTYPES}, got {dtype}"
    _register_decompositions()
    return None


def grad_out_format(input: Tensor, kernel: Tensor, stride) -> torch.memory_format | None:
    """None: every tap works on views of whatever layout the gradient comes in."""
    return None


# ------------------------------------------------------------------------------------------------
# Eager: taps clipped to the image, accumulated in place
# ------------------------------------------------------------------------------------------------


def _span(out_size: int, in_size: int, stride: int, padding: int, dilation: int, tap: int):
    """(output slice, input slice) of the output positions whose tap ``tap`` reads inside the
    image (input position ``i*stride - padding + tap*dilation`` in [0, in_size)); None if none."""
    offset = tap * dilation - padding
    first = max(0, -(offset // stride))  # ceil(-offset / stride)
    last = min(out_size, (in_size - 1 - offset) // stride + 1)
    if last <= first:
        return None
    start = first * stride + offset
    return slice(first, last), slice(start, start + (last - first - 1) * stride + 1, stride)


def _taps(kernel_size, in_size, out_size, stride, padding, dilation) -> Iterator[tuple]:
    """(u, v, output rows, output cols, input rows, input cols) of every tap that reads at least
    one pixel of the image."""
    for u in range(kernel_size[0]):
        rows = _span(out_size[0], in_size[0], stride[0], padding[0], dilation[0], u)
        if rows is None:
            continue
        for v in range(kernel_size[1]):
            cols = _span(out_size[1], in_size[1], stride[1], padding[1], dilation[1], v)
            if cols is not None:
                yield u, v, rows[0], cols[0], rows[1], cols[1]


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision storage (KH*KW roundings would cost ~1% in bfloat16)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _zeros(shape, like: Tensor, fmt: torch.memory_format) -> Tensor:
    """A zeroed accumulator in ``fmt`` (channels_last in, channels_last out)."""
    acc = torch.empty(
        shape, dtype=_accumulator_dtype(like.dtype), device=like.device, memory_format=fmt
    )
    return acc.zero_()


def forward(input: Tensor, kernel: Tensor, stride, padding, dilation) -> Tensor:
    n, c, h, w = input.shape
    _, g, kh, kw, ho, wo = kernel.shape
    acc = _zeros((n, c, ho, wo), input, memory_format(input))
    out, x = acc.unflatten(1, (g, c // g)), input.unflatten(1, (g, c // g))
    for u, v, oi, oj, ii, ij in _taps((kh, kw), (h, w), (ho, wo), stride, padding, dilation):
        out[..., oi, oj].addcmul_(x[..., ii, ij], kernel[:, :, None, u, v, oi, oj])
    return acc.to(input.dtype)


def grad_input(grad_out: Tensor, kernel: Tensor, input_size, stride, padding, dilation) -> Tensor:
    """Each tap hands its share back to the pixels it read: within one tap distinct output
    pixels read distinct input pixels, so the in-place accumulation has no conflicts."""
    n, c, ho, wo = grad_out.shape
    _, g, kh, kw, _, _ = kernel.shape
    h, w = input_size
    acc = _zeros((n, c, h, w), grad_out, memory_format(grad_out))
    grad, go = acc.unflatten(1, (g, c // g)), grad_out.unflatten(1, (g, c // g))
    for u, v, oi, oj, ii, ij in _taps((kh, kw), (h, w), (ho, wo), stride, padding, dilation):
        grad[..., ii, ij].addcmul_(go[..., oi, oj], kernel[:, :, None, u, v, oi, oj])
    return acc.to(grad_out.dtype)


def grad_kernel(
    grad_out: Tensor, input: Tensor, kernel_size, groups, stride, padding, dilation
) -> Tensor:
    """Per tap, the product of the gradient and the shifted input, summed over the group's
    channels straight into the tap's slice of the result (``sum`` accumulates half precision in
    float32). The products share one output-sized buffer: a fresh one per tap, of a slightly
    different size each, left the allocator holding several at once."""
    n, c, ho, wo = grad_out.shape
    h, w = input.shape[2:]
    kh, kw = kernel_size
    grad = grad_out.new_zeros((n, groups, kh, kw, ho, wo))
    go, x = grad_out.unflatten(1, (groups, c // groups)), input.unflatten(1, (groups, c // groups))
    products = torch.empty_like(go)
    for u, v, oi, oj, ii, ij in _taps((kh, kw), (h, w), (ho, wo), stride, padding, dilation):
        product = torch.mul(go[..., oi, oj], x[..., ii, ij], out=products[..., oi, oj])
        torch.sum(product, dim=2, out=grad[:, :, u, v, oi, oj])
    return grad


# ------------------------------------------------------------------------------------------------
# Compiled: functional decompositions for Inductor
# ------------------------------------------------------------------------------------------------


def _window(t: Tensor, u: int, v: int, out_size, stride, dilation) -> Tensor:
    """The [..., Ho, Wo] view of the padded ``t`` that tap (u, v) reads."""
    (ho, wo), (sh, sw), (dh, dw) = out_size, stride, dilation
    rows = slice(u * dh, u * dh + (ho - 1) * sh + 1, sh)
    return t[..., rows, v * dw : v * dw + (wo - 1) * sw + 1 : sw]


def _padded(t: Tensor, padding, acc: torch.dtype) -> Tensor:
    return F.pad(t.to(acc), (padding[1], padding[1], padding[0], padding[0]))


def forward_decomposition(input, kernel, stride, padding, dilation, backend):
    """``involution2d`` as one sum of KH*KW products of padded-input views and kernel taps."""
    if backend != NAME:
        return NotImplemented
    n, c = input.shape[:2]
    _, g, kh, kw, ho, wo = kernel.shape
    acc = _accumulator_dtype(input.dtype)
    x = _padded(input, padding, acc).unflatten(1, (g, c // g))
    k = kernel.to(acc)
    out = sum(
        _window(x, u, v, (ho, wo), stride, dilation) * k[:, :, None, u, v]
        for u in range(kh)
        for v in range(kw)
    )
    return out.flatten(1, 2).to(input.dtype).contiguous(memory_format=memory_format(input))


def grad_input_decomposition(grad_out, kernel, input_size, stride, padding, dilation, backend):
    """Each tap's product placed (``slice_scatter``: a masked select to Inductor) on the pixels
    it read, the taps clipped to the image as in eager (a padded grid would be realised), and
    summed."""
    if backend != NAME:
        return NotImplemented
    n, c, ho, wo = grad_out.shape
    _, g, kh, kw, _, _ = kernel.shape
    h, w = input_size
    acc = _accumulator_dtype(grad_out.dtype)
    go, k = grad_out.to(acc).unflatten(1, (g, c // g)), kernel.to(acc)
    total = torch.zeros((n, c, h, w), dtype=acc, device=go.device)
    for u, v, oi, oj, ii, ij in _taps((kh, kw), (h, w), (ho, wo), stride, padding, dilation):
        share = (go[..., oi, oj] * k[:, :, None, u, v, oi, oj]).flatten(1, 2)
        rows = torch.zeros((n, c, share.shape[2], w), dtype=acc, device=go.device)
        rows = rows.slice_scatter(share, 3, ij.start, ij.stop, ij.step)
        grid = torch.zeros((n, c, h, w), dtype=acc, device=go.device)
        total = total + grid.slice_scatter(rows, 2, ii.start, ii.stop, ii.step)
    return total.to(grad_out.dtype).contiguous(memory_format=memory_format(grad_out))


def grad_kernel_decomposition(
    grad_out, input, kernel_size, groups, stride, padding, dilation, backend
):
    """One reduction over the group's channels per tap, stacked into the kernel layout."""
    if backend != NAME:
        return NotImplemented
    n, c, ho, wo = grad_out.shape
    kh, kw = kernel_size
    acc = _accumulator_dtype(grad_out.dtype)
    x = _padded(input, padding, acc).unflatten(1, (groups, c // groups))
    go = grad_out.to(acc).unflatten(1, (groups, c // groups))
    taps = [
        (go * _window(x, u, v, (ho, wo), stride, dilation)).sum(2)
        for u in range(kh)
        for v in range(kw)
    ]
    return torch.stack(taps, 2).unflatten(2, (kh, kw)).to(grad_out.dtype).contiguous()


_REGISTERED: list[bool] = []
# Decompositions of ops built on this backend's (the fused op's, ``involution.ops.fused``), added
# by their modules at import and put into Inductor's table with the three below.
EXTRA_DECOMPOSITIONS: dict = {}


@run_while_tracing
def _register_decompositions() -> bool:
    """Put the three decompositions (and ``EXTRA_DECOMPOSITIONS``) into Inductor's table, once,
    while Dynamo traces (before Inductor picks its table; eager calls import nothing). Each falls
    through (NotImplemented) for the other backends, whose ops stay opaque."""
    if _REGISTERED or not torch.compiler.is_compiling():
        return True
    from torch._inductor import decomposition as inductor

    ops = torch.ops.involution
    for op, fn in (
        (ops.involution2d.default, forward_decomposition),
        (ops.involution2d_grad_input.default, grad_input_decomposition),
        (ops.involution2d_grad_kernel.default, grad_kernel_decomposition),
        *EXTRA_DECOMPOSITIONS.items(),
    ):
        inductor.decompositions.setdefault(op, fn)
    # Inductor caches a copy of the table (with its random-op decompositions) on first use
    inductor.fast_random_decomps.cache_clear()
    _REGISTERED.append(True)
    return True
