"""``torch.library`` registration of the involution op and its two gradients.

Three custom ops, each with a fake (meta) implementation, an autograd formula, an autocast rule
and a FLOP formula::

    involution::involution2d(input, kernel, stride, padding, dilation, backend) -> out
    involution::involution2d_grad_input(grad_out, kernel, input_size, stride, padding, dilation,
                                        backend)
    involution::involution2d_grad_kernel(grad_out, input, kernel_size, groups, stride, padding,
                                         dilation, backend)

They close under differentiation (the gradient of each is made of the three), so double backward
works, and ``torch.compile`` sees each as one opaque node (no graph break). ``backend`` is a
concrete backend name here (``"auto"`` is resolved by the public functions before the call); the
registration names none: it calls the backend's entry points and its ``grad_out_format`` hook.

The fused op (``involution::involution2d.fused``, an overload of the first, and its backward) is
registered in ``involution.ops.fused`` with the autocast rule of this module.

Memory formats (the fake implementations promise the same strides):
- ``involution2d``: the output has the input's memory format (channels_last or contiguous);
- ``involution2d_grad_input``: the memory format of ``grad_out``;
- ``involution2d_grad_kernel``: contiguous.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from involution.ops import _backends
from involution.ops._args import autocast_dtype
from involution.ops._formats import fresh, memory_format

# ------------------------------------------------------------------------------------------------
# The three ops
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op("involution::involution2d", mutates_args=())
def involution2d_op(
    input: Tensor,
    kernel: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    backend: str,
) -> Tensor:
    impl = _backends.get(backend)
    out = impl.forward(input, kernel, tuple(stride), tuple(padding), tuple(dilation))
    return fresh(out, memory_format(input))


def _empty_output(input: Tensor, kernel: Tensor) -> Tensor:
    n, c = input.shape[0], input.shape[1]
    ho, wo = kernel.shape[4], kernel.shape[5]
    return torch.empty(
        (n, c, ho, wo),
        dtype=input.dtype,
        device=input.device,
        memory_format=memory_format(input),
    )


@involution2d_op.register_fake
def _(input, kernel, stride, padding, dilation, backend):
    return _empty_output(input, kernel)


@torch.library.custom_op("involution::involution2d_grad_input", mutates_args=())
def grad_input_op(
    grad_out: Tensor,
    kernel: Tensor,
    input_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    backend: str,
) -> Tensor:
    grad = _backends.get(backend).grad_input(
        grad_out, kernel, tuple(input_size), tuple(stride), tuple(padding), tuple(dilation)
    )
    return fresh(grad, memory_format(grad_out))


@grad_input_op.register_fake
def _(grad_out, kernel, input_size, stride, padding, dilation, backend):
    n, c = grad_out.shape[0], grad_out.shape[1]
    return torch.empty(
        (n, c, input_size[0], input_size[1]),
        dtype=grad_out.dtype,
        device=grad_out.device,
        memory_format=memory_format(grad_out),
    )


@torch.library.custom_op("involution::involution2d_grad_kernel", mutates_args=())
def grad_kernel_op(
    grad_out: Tensor,
    input: Tensor,
    kernel_size: Sequence[int],
    groups: int,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    backend: str,
) -> Tensor:
    grad = _backends.get(backend).grad_kernel(
        grad_out, input, tuple(kernel_size), groups, tuple(stride), tuple(padding), tuple(dilation)
    )
    return fresh(grad)


@grad_kernel_op.register_fake
def _(grad_out, input, kernel_size, groups, stride, padding, dilation, backend):
    n, _, ho, wo = grad_out.shape
    return grad_out.new_empty((n, groups, kernel_size[0], kernel_size[1], ho, wo))


# ------------------------------------------------------------------------------------------------
# Autograd: each gradient is again one of the three ops
#
#   d out / d input   = grad_input(grad_out, kernel)
#   d out / d kernel  = grad_kernel(grad_out, input)
#   grad_input(go, k):  d/d go = involution2d(gg, k)      d/d k = grad_kernel(go, gg)
#   grad_kernel(go, x): d/d go = involution2d(x, gg)      d/d x = grad_input(go, gg)
# ------------------------------------------------------------------------------------------------


def _setup_forward(ctx, inputs, output) -> None:
    input, kernel, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(input, kernel)
    ctx.args = (list(stride), list(padding), list(dilation), backend)
    # The backend's layout policy: one copy of the incoming gradient in the format both gradient
    # ops compute in can be cheaper than letting each lay it out as it needs.
    ctx.grad_out_format = _backends.get(backend).grad_out_format(input, kernel, tuple(stride))


def _backward_forward(ctx, grad_out: Tensor):
    input, kernel = ctx.saved_tensors
    stride, padding, dilation, backend = ctx.args
    if ctx.grad_out_format is not None:
        grad_out = grad_out.contiguous(memory_format=ctx.grad_out_format)
    grad_input = grad_kernel = None
    if ctx.needs_input_grad[0]:
        grad_input = grad_input_op(
            grad_out, kernel, list(input.shape[2:]), stride, padding, dilation, backend
        )
    if ctx.needs_input_grad[1]:
        grad_kernel = grad_kernel_op(
            grad_out,
            input,
            list(kernel.shape[2:4]),
            kernel.shape[1],
            stride,
            padding,
            dilation,
            backend,
        )
    return grad_input, grad_kernel, None, None, None, None


def _setup_grad_input(ctx, inputs, output) -> None:
    grad_out, kernel, input_size, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(grad_out, kernel)
    ctx.args = (list(stride), list(padding), list(dilation), backend)


def _backward_grad_input(ctx, gg: Tensor):
    grad_out, kernel = ctx.saved_tensors
    stride, padding, dilation, backend = ctx.args
    d_grad_out = d_kernel = None
    if ctx.needs_input_grad[0]:
        d_grad_out = involution2d_op(gg, kernel, stride, padding, dilation, backend)
    if ctx.needs_input_grad[1]:
        d_kernel = grad_kernel_op(
            grad_out,
            gg,
            list(kernel.shape[2:4]),
            kernel.shape[1],
            stride,
            padding,
            dilation,
            backend,
        )
    return d_grad_out, d_kernel, None, None, None, None, None


def _setup_grad_kernel(ctx, inputs, output) -> None:
    grad_out, input, kernel_size, groups, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(grad_out, input)
    ctx.args = (list(stride), list(padding), list(dilation), backend)


def _backward_grad_kernel(ctx, gg: Tensor):
    grad_out, input = ctx.saved_tensors
    stride, padding, dilation, backend = ctx.args
    d_grad_out = d_input = None
    if ctx.needs_input_grad[0]:
        d_grad_out = involution2d_op(input, gg, stride, padding, dilation, backend)
    if ctx.needs_input_grad[1]:
        d_input = grad_input_op(
            grad_out, gg, list(input.shape[2:]), stride, padding, dilation, backend
        )
    return d_grad_out, d_input, None, None, None, None, None, None


involution2d_op.register_autograd(_backward_forward, setup_context=_setup_forward)
grad_input_op.register_autograd(_backward_grad_input, setup_context=_setup_grad_input)
grad_kernel_op.register_autograd(_backward_grad_kernel, setup_context=_setup_grad_kernel)


# ------------------------------------------------------------------------------------------------
# Autocast
#
# CUDA: like convolutions, floating inputs (not float64) are cast to the autocast dtype (float16 or
#       bfloat16, whichever torch.autocast was given); the kernels accumulate in float32.
# CPU:  the Numba CPU kernels are float32/float64, so half-precision inputs are cast to float32.
# Then the op runs with autocast switched off for its device.
# ------------------------------------------------------------------------------------------------

_LIB = torch.library.Library("involution", "FRAGMENT")  # noqa: TOR901 - registrations below


def autocast_rule(device_type: str, name: str, op) -> None:
    """Register the autocast rule above for op ``name`` (of this library) on ``device_type``."""
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def cast(value):
        if (
            isinstance(value, Tensor)
            and value.is_floating_point()
            and value.device.type == device_type
        ):
            return value.to(autocast_dtype(device_type, value.dtype) or value.dtype)
        return value

    def rule(_keyset, *args):
        args = tuple(cast(a) for a in args)  # before the guard: it makes autocast look disabled
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args)

    _LIB.impl(name, rule, key_name, with_keyset=True)


for _device_type in ("cpu", "cuda"):
    for _name, _op in (
        ("involution2d", involution2d_op),
        ("involution2d_grad_input", grad_input_op),
        ("involution2d_grad_kernel", grad_kernel_op),
    ):
        autocast_rule(_device_type, _name, _op)


# ------------------------------------------------------------------------------------------------
# FLOP formulas (torch.utils.flop_counter convention: one multiply-add = 2 FLOPs). Each of the
# three ops does N*C*KH*KW*Ho*Wo multiply-adds.
# ------------------------------------------------------------------------------------------------


def register_flops() -> None:
    """Register the three ops' FLOP formulas. Called by ``involution.ops`` once every op and
    overload is defined: an op packet's hash changes when an overload is added to it, which would
    hide an earlier registration from the flop counter's lookup."""
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.involution.involution2d)
    def _(input_shape, kernel_shape, *args, out_shape=None, **kwargs) -> int:
        if len(kernel_shape) == 4:
            # the fused overload (involution.ops.fused): (input, hidden, weight, bias,
            # kernel_size, ...): the kernel generation's 1x1 convolution and the aggregation
            n, reduced, ho, wo = kernel_shape
            taps = args[0][0]
            kh, kw = args[2]
            return 2 * n * (taps * reduced + input_shape[1] * kh * kw) * ho * wo
        n, g, kh, kw, ho, wo = kernel_shape
        return 2 * n * input_shape[1] * kh * kw * ho * wo

    @register_flop_formula(torch.ops.involution.involution2d_grad_input)
    def _(grad_out_shape, kernel_shape, *args, out_shape=None, **kwargs) -> int:
        n, g, kh, kw, ho, wo = kernel_shape
        return 2 * n * grad_out_shape[1] * kh * kw * ho * wo

    @register_flop_formula(torch.ops.involution.involution2d_grad_kernel)
    def _(grad_out_shape, input_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
        n, c, ho, wo = grad_out_shape
        return 2 * n * c * kernel_size[0] * kernel_size[1] * ho * wo
