"""The fused involution: the kernel generation's last 1x1 convolution and the aggregation in one op.

``fused_involution2d(input, hidden, weight, bias, kernel_size, ...)`` is ``involution2d`` with the
kernel ``weight @ hidden + bias`` (per pixel)::

    kernel[n, g, u, v, i, j] = bias[t] + sum_r weight[t, r] * hidden[n, r, i, j]
    (t = (g*KH + u)*KW + v)

On a backend with a fused kernel (``numba_cpu``, for groups of a multiple of 16 channels) the
kernel is made a row at a time in cache and the [N, G, KH, KW, Ho, Wo] tensor never exists, in
the forward or the backward (which makes each row again where it needs it): the op keeps only its
operands for backward, and no recomputation is needed around it. Elsewhere it runs as the
composition it stands for (a batched matrix product, then ``involution2d`` on the same backend),
which is also what the fused kernels are tested against.

Two ``torch.library`` ops: ``involution::involution2d.fused`` (an overload of the aggregation op,
so that counting the model's multiply-adds finds it where it looks for the aggregation; its FLOP
formula counts the generation and the aggregation) and ``involution::involution2d_fused_backward``
(all four gradients in one pass). Both have fake impls, autocast rules and FLOP formulas; double
backward differentiates the composition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from involution.ops import _backends, _library, _torch
from involution.ops._args import normalize
from involution.ops._formats import fresh, memory_format

__all__ = ["fused_involution2d", "fused_kernel_runs"]


def _weight_2d(weight: Tensor) -> Tensor:
    """[T, R] from [T, R] or a 1x1 convolution's [T, R, 1, 1]."""
    if weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1):
        return weight.flatten(1)
    return weight


def fused_involution2d(
    input: Tensor,
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] = 1,
    backend: str = "auto",
) -> Tensor:
    """Involution of ``input`` with the kernel generated from ``hidden`` by a 1x1 convolution.

    Equal to ``involution2d(input, (conv1x1(hidden, weight, bias)).view(N, G, KH, KW, Ho, Wo),
    stride, padding, dilation)``; where the backend has a fused kernel (``fused_kernel_runs``)
    the kernel tensor is never made. Differentiable (twice) in all four tensors,
    ``torch.compile``-able without graph breaks, autocast-aware, counted by
    ``torch.utils.flop_counter`` (generation and aggregation).

    Args:
        input (Tensor[N, C, H, W]): the feature map, any floating dtype.
        hidden (Tensor[N, R, Ho, Wo]): the map the kernel is generated from, at the output's size.
        weight (Tensor[G*KH*KW, R] or Tensor[G*KH*KW, R, 1, 1]): the 1x1 convolution; row
            (g*KH + u)*KW + v makes tap (u, v) of group g. G must divide C.
        bias (Tensor[G*KH*KW], optional): its bias.
        kernel_size (int or Tuple[int, int]): (KH, KW).
        stride, padding, dilation, backend: as for ``involution2d``.

    Returns:
        Tensor[N, C, Ho, Wo] in ``input``'s memory format.

    Raises:
        TypeError, ValueError: as ``involution2d``, one line naming the argument; also a
            ``hidden`` not of the output's size or a ``weight`` / ``bias`` that does not fit.

    Example:
        >>> import torch
        >>> x, hidden = torch.randn(2, 32, 9, 9), torch.randn(2, 8, 9, 9)
        >>> weight, bias = torch.randn(2 * 3 * 3, 8), torch.randn(2 * 3 * 3)  # G = 2, K = 3
        >>> fused_involution2d(x, hidden, weight, bias, 3).shape
        torch.Size([2, 32, 9, 9])
    """
    weight2d = _weight_2d(weight) if isinstance(weight, Tensor) else weight
    tensors = [
        ("input", input, "[N,C,H,W]"),
        ("hidden", hidden, "[N,R,Ho,Wo]"),
        ("weight", weight2d, "[T,R]"),
    ]
    if bias is not None:
        tensors.append(("bias", bias, "[T]"))
    args = normalize(tensors, kernel_size, stride, padding, dilation, backend)
    (kh, kw), (n, c, h, w) = args.kernel_size, input.shape
    taps, reduced = weight2d.shape
    if taps % (kh * kw) or c % max(taps // (kh * kw), 1) or taps == 0:
        raise ValueError(
            f"weight rows ({taps}) must be G*KH*KW for a G that divides the input channels C={c} "
            f"(KH*KW = {kh * kw})"
        )
    ho, wo = args.output_size((h, w))
    if tuple(hidden.shape) != (n, reduced, ho, wo):
        raise ValueError(
            f"hidden shape must be (N, R, Ho, Wo) = {(n, reduced, ho, wo)} (R: weight's columns), "
            f"got {tuple(hidden.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (taps,):
        raise ValueError(f"bias shape must be ({taps},), got {tuple(bias.shape)}")
    return fused_op(
        input,
        hidden,
        weight2d,
        bias,
        args.kernel_size,
        args.stride,
        args.padding,
        args.dilation,
        args.backend,
    )


def fused_kernel_runs(input: Tensor, groups: int, backend: str = "auto") -> bool:
    """Whether ``fused_involution2d`` on ``backend`` runs a fused kernel for this input and
    ``groups`` (else it runs the composition, which makes the kernel tensor)."""
    try:
        name = _backends.resolve_backend(backend, input.device, input.dtype)
    except (TypeError, ValueError):
        return False
    impl = _backends.get(name)
    can_run = getattr(impl, "fused_can_run", None)
    return can_run is not None and can_run(input, groups) is None


# ------------------------------------------------------------------------------------------------
# The ops
# ------------------------------------------------------------------------------------------------


def _fused_impl(backend: str, input: Tensor, groups: int):
    """The backend module when it has a fused kernel for this call, else None."""
    impl = _backends.get(backend)
    can_run = getattr(impl, "fused_can_run", None)
    return impl if can_run is not None and can_run(input, groups) is None else None


def _groups(weight: Tensor, kernel_size: Sequence[int]) -> int:
    return weight.shape[0] // (kernel_size[0] * kernel_size[1])


def _kernel(hidden: Tensor, weight: Tensor, bias: Tensor | None, kernel_size) -> Tensor:
    """The kernel tensor [N, G, KH, KW, Ho, Wo] the fused op stands for (a batched product whose
    output is the kernel's layout without a copy)."""
    n, reduced, ho, wo = hidden.shape
    rows = hidden.reshape(n, reduced, ho * wo)
    lhs = weight.unsqueeze(0).expand(n, -1, -1)
    kernel = torch.bmm(lhs, rows) if bias is None else torch.baddbmm(bias[:, None], lhs, rows)
    return kernel.view(n, _groups(weight, kernel_size), kernel_size[0], kernel_size[1], ho, wo)


@torch.library.custom_op("involution::involution2d.fused", mutates_args=())
def fused_op(
    input: Tensor,
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    backend: str,
) -> Tensor:
    args = (tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))
    impl = _fused_impl(backend, input, _groups(weight, kernel_size))
    if impl is not None:
        out = impl.fused_forward(input, hidden, weight, bias, *args)
    else:
        kernel = _kernel(hidden, weight, bias, kernel_size)
        out = _library.involution2d_op(input, kernel, stride, padding, dilation, backend)
    return fresh(out, memory_format(input))


@fused_op.register_fake
def _(input, hidden, weight, bias, kernel_size, stride, padding, dilation, backend):
    n, c, ho, wo = input.shape[0], input.shape[1], hidden.shape[2], hidden.shape[3]
    return torch.empty(
        (n, c, ho, wo), dtype=input.dtype, device=input.device, memory_format=memory_format(input)
    )


@torch.library.custom_op("involution::involution2d_fused_backward", mutates_args=())
def fused_backward_op(
    grad_out: Tensor,
    input: Tensor,
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    args = (tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))
    fmt = memory_format(grad_out)
    impl = _fused_impl(backend, input, _groups(weight, kernel_size))
    if impl is not None:
        grads = impl.fused_backward(grad_out, input, hidden, weight, bias, *args)
    else:
        grads = _composed_grads(
            grad_out, input, hidden, weight, bias, kernel_size, stride, padding, dilation, backend
        )
    grad_input, grad_hidden, grad_weight, grad_bias = grads
    return (
        fresh(grad_input, fmt),
        fresh(grad_hidden, fmt),
        fresh(grad_weight),
        fresh(grad_bias),
    )


@fused_backward_op.register_fake
def _(grad_out, input, hidden, weight, bias, kernel_size, stride, padding, dilation, backend):
    fmt = memory_format(grad_out)
    return (
        torch.empty(input.shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=fmt),
        torch.empty(hidden.shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=fmt),
        grad_out.new_empty(weight.shape),
        grad_out.new_empty(weight.shape[:1]),
    )


def _composed_grads(
    grad_out,
    input,
    hidden,
    weight,
    bias,
    kernel_size,
    stride,
    padding,
    dilation,
    backend,
    grad_input_fn=_library.grad_input_op,
    grad_kernel_fn=_library.grad_kernel_op,
):
    """The four gradients through the composition (registered ops and matrix products, so that
    they are differentiable again: double backward runs through here; Inductor's decomposition
    passes the torch backend's functional gradients instead)."""
    n, reduced, ho, wo = hidden.shape
    kernel = _kernel(hidden, weight, bias, kernel_size)
    grad_input = grad_input_fn(
        grad_out, kernel, list(input.shape[2:]), stride, padding, dilation, backend
    )
    grad_kernel = grad_kernel_fn(
        grad_out, input, list(kernel_size), kernel.shape[1], stride, padding, dilation, backend
    ).reshape(n, weight.shape[0], ho * wo)
    rows = hidden.reshape(n, reduced, ho * wo)
    grad_hidden = torch.matmul(weight.t(), grad_kernel).view(n, reduced, ho, wo)
    grad_weight = torch.matmul(grad_kernel, rows.transpose(1, 2)).sum(0)
    grad_bias = grad_kernel.sum((0, 2))
    return grad_input, grad_hidden, grad_weight, grad_bias


def _setup(ctx, inputs, output) -> None:
    input, hidden, weight, bias, kernel_size, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(input, hidden, weight, bias)
    ctx.args = (list(kernel_size), list(stride), list(padding), list(dilation), backend)


def _backward(ctx, grad_out: Tensor):
    input, hidden, weight, bias = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: the differentiable composition
        grads = _composed_grads(grad_out, input, hidden, weight, bias, *ctx.args)
    else:
        grads = fused_backward_op(grad_out, input, hidden, weight, bias, *ctx.args)
    grad_input, grad_hidden, grad_weight, grad_bias = grads
    needs = ctx.needs_input_grad
    return (
        grad_input if needs[0] else None,
        grad_hidden if needs[1] else None,
        grad_weight if needs[2] else None,
        grad_bias if bias is not None and needs[3] else None,
        None,
        None,
        None,
        None,
        None,
    )


fused_op.register_autograd(_backward, setup_context=_setup)


def _forward_decomposition(
    input, hidden, weight, bias, kernel_size, stride, padding, dilation, backend
):
    """For Inductor, on the torch backend: the kernel's product and the taps, visible to the
    compiler (``involution.ops._torch``); other backends' calls stay opaque."""
    if backend != _torch.NAME:
        return NotImplemented
    kernel = _kernel(hidden, weight, bias, kernel_size)
    return _torch.forward_decomposition(input, kernel, stride, padding, dilation, backend)


def _backward_decomposition(
    grad_out, input, hidden, weight, bias, kernel_size, stride, padding, dilation, backend
):
    if backend != _torch.NAME:
        return NotImplemented
    grads = _composed_grads(
        grad_out,
        input,
        hidden,
        weight,
        bias,
        kernel_size,
        stride,
        padding,
        dilation,
        backend,
        _torch.grad_input_decomposition,
        _torch.grad_kernel_decomposition,
    )
    return tuple(grads)


_torch.EXTRA_DECOMPOSITIONS[torch.ops.involution.involution2d.fused] = _forward_decomposition
_torch.EXTRA_DECOMPOSITIONS[torch.ops.involution.involution2d_fused_backward.default] = (
    _backward_decomposition
)

for _device_type in ("cpu", "cuda"):
    _library.autocast_rule(_device_type, "involution2d.fused", fused_op)
    _library.autocast_rule(_device_type, "involution2d_fused_backward", fused_backward_op)


def register_flops() -> None:
    """Register the fused backward's FLOP formula (the forward is counted by the aggregation
    packet's formula, ``_library.register_flops``); called by ``involution.ops``."""
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.involution.involution2d_fused_backward)
    def _(
        grad_out_shape, input_shape, hidden_shape, weight_shape, *args, out_shape=None, **kwargs
    ) -> int:
        # the kernel made again, grad_input, the kernel gradient, grad_hidden, grad_weight
        n, c, ho, wo = grad_out_shape
        taps, reduced = weight_shape
        kernel_size = args[1]
        aggregation = n * c * kernel_size[0] * kernel_size[1] * ho * wo
        return 2 * (2 * aggregation + 3 * n * taps * reduced * ho * wo)
