"""Backend ``numba_cpu``: torch tensors <-> the Numba CPU kernels of ``involution.kernels.cpu``.

CPU tensors, float32 and float64. The kernels write into torch-allocated outputs through
``Tensor.numpy()`` views (no copies).

- Groups of a multiple of 16 channels (RedNet's): the blocked kernels, which read and write
  operands of any strides (NCHW or channels_last alike, no transposed copies); outputs come in
  the memory format of the operand they follow. This backend also runs the fused op
  (``fused_forward``, ``fused_backward``: the kernel generation's last 1x1 conv fused with the
  aggregation) for these groups.
- Other group widths: the NCHW and NHWC kernels, one picked per call by the kernels' policy
  (``involution.kernels.cpu.policy``) from the group width, the kernel size, the stride and the
  map width; operands are brought to the chosen layout with one copy each where they are not in
  it already, and ``grad_out_format`` asks the forward's backward for a channels-last incoming
  gradient where both gradient ops would otherwise transpose it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from involution.kernels import cpu as kernels
from involution.ops._formats import is_channels_last

NAME = "numba_cpu"
DTYPES = (torch.float32, torch.float64)


def can_run(device: torch.device, dtype: torch.dtype, explicit: bool) -> str | None:
    """None for CPU float32/float64 tensors, else why not."""
    if device.type != "cpu":
        return f"needs CPU tensors (device 'cpu'), got device {device}"
    if dtype not in DTYPES:
        return f"supports dtypes {DTYPES}, got {dtype}"
    return None


def _blocked(input: Tensor, groups: int) -> bool:
    """Whether the blocked kernels run a call with ``groups`` groups over ``input``'s channels."""
    return kernels.blocked_applies(input.shape[1] // groups)


def _view(t: Tensor):
    """A NumPy view of ``t`` with its own strides (the blocked kernels take any)."""
    return t.detach().numpy()


def _like(shape_nchw, like: Tensor) -> Tensor:
    """A new [N, C, H, W] tensor in ``like``'s memory format."""
    fmt = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    return torch.empty(shape_nchw, dtype=like.dtype, memory_format=fmt)


def uses_nhwc(input: Tensor, kernel: Tensor) -> bool:
    """Whether the forward and grad_input of this call compute in NHWC (``input``: the op's input,
    or the incoming gradient for grad_input)."""
    return kernels.nhwc_is_faster(
        input.shape[1] // kernel.shape[1],
        kernel.shape[2] * kernel.shape[3],
        is_channels_last(input),
    )


def _grad_kernel_uses_nhwc(
    channels, groups, kernel_size, stride, width, out_width, operands_nhwc
) -> bool:
    return kernels.grad_kernel_nhwc_is_faster(
        channels // groups, kernel_size[0] * kernel_size[1], stride, width, out_width, operands_nhwc
    )


def grad_out_format(input: Tensor, kernel: Tensor, stride) -> torch.memory_format | None:
    """channels_last when both backward ops compute in NHWC: only then is one channels-last copy
    of the incoming gradient, shared by both, cheaper than letting each op lay it out as it needs
    (on wide maps the kernel gradient stays NCHW, and a shared copy would cost a transpose back).
    None for the blocked kernels, which read any layout."""
    if _blocked(input, kernel.shape[1]):
        return None
    shares = uses_nhwc(input, kernel) and _grad_kernel_uses_nhwc(
        input.shape[1],
        kernel.shape[1],
        kernel.shape[2:4],
        stride,
        input.shape[3],
        kernel.shape[5],
        is_channels_last(input),
    )
    return torch.channels_last if shares else None


def _kernel_layout(t: Tensor, nhwc: bool):
    """A NumPy view of ``t`` in the kernel layout (copies only when ``t`` is not laid out so)."""
    t = t.detach()
    if nhwc:
        return t.permute(0, 2, 3, 1).contiguous().numpy()
    return t.contiguous().numpy()


def _empty(shape_nchw, like: Tensor, nhwc: bool) -> tuple[Tensor, object]:
    """(logical NCHW tensor, NumPy view in kernel layout) of a new output."""
    if nhwc:  # allocated channels_last: the result owns its storage (no permuted view)
        t = torch.empty(shape_nchw, dtype=like.dtype, memory_format=torch.channels_last)
        return t, t.permute(0, 2, 3, 1).numpy()
    t = torch.empty(shape_nchw, dtype=like.dtype)
    return t, t.numpy()


def forward(input: Tensor, kernel: Tensor, stride, padding, dilation) -> Tensor:
    n, c = input.shape[:2]
    ho, wo = kernel.shape[4], kernel.shape[5]
    if _blocked(input, kernel.shape[1]):
        out = _like((n, c, ho, wo), input)
        kernels.blocked_forward(
            _view(input), _view(kernel.contiguous()), out.numpy(), stride, padding, dilation
        )
        return out
    nhwc = uses_nhwc(input, kernel)
    out, out_np = _empty((n, c, ho, wo), input, nhwc)
    layout = "nhwc" if nhwc else "nchw"
    kernels.forward(
        _kernel_layout(input, nhwc),
        kernel.detach().contiguous().numpy(),
        out_np,
        stride,
        padding,
        dilation,
        layout,
    )
    return out


def grad_input(grad_out: Tensor, kernel: Tensor, input_size, stride, padding, dilation) -> Tensor:
    n, c = grad_out.shape[:2]
    if _blocked(grad_out, kernel.shape[1]):
        grad = _like((n, c, input_size[0], input_size[1]), grad_out)
        kernels.blocked_grad_input(
            _view(grad_out), _view(kernel.contiguous()), grad.numpy(), stride, padding, dilation
        )
        return grad
    nhwc = uses_nhwc(grad_out, kernel)
    grad, grad_np = _empty((n, c, input_size[0], input_size[1]), grad_out, nhwc)
    layout = "nhwc" if nhwc else "nchw"
    kernels.grad_input(
        _kernel_layout(grad_out, nhwc),
        kernel.detach().contiguous().numpy(),
        grad_np,
        stride,
        padding,
        dilation,
        layout,
    )
    return grad


def grad_kernel(
    grad_out: Tensor, input: Tensor, kernel_size, groups, stride, padding, dilation
) -> Tensor:
    n, c, ho, wo = grad_out.shape
    if _blocked(grad_out, groups):
        grad = torch.empty(
            (n, groups, kernel_size[0], kernel_size[1], ho, wo), dtype=grad_out.dtype
        )
        kernels.blocked_grad_kernel(
            _view(grad_out), _view(input), grad.numpy(), stride, padding, dilation
        )
        return grad
    nhwc = _grad_kernel_uses_nhwc(
        c, groups, kernel_size, stride, input.shape[3], wo, is_channels_last(input)
    )
    grad = torch.empty((n, groups, kernel_size[0], kernel_size[1], ho, wo), dtype=grad_out.dtype)
    layout = "nhwc" if nhwc else "nchw"
    kernels.grad_kernel(
        _kernel_layout(grad_out, nhwc),
        _kernel_layout(input, nhwc),
        grad.numpy(),
        stride,
        padding,
        dilation,
        layout,
    )
    return grad


# ------------------------------------------------------------------------------------------------
# The fused op (``involution.ops.fused_involution2d``)
# ------------------------------------------------------------------------------------------------


def fused_can_run(input: Tensor, groups: int) -> str | None:
    """None when the fused kernels run this call, else why not (one clause)."""
    reason = can_run(input.device, input.dtype, explicit=True)
    if reason is not None:
        return reason
    if not _blocked(input, groups):
        return (
            f"fuses groups of a multiple of {kernels.LANES} channels, got "
            f"{input.shape[1] // groups} channels per group"
        )
    return None


def fused_forward(
    input: Tensor,
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size,
    stride,
    padding,
    dilation,
) -> Tensor:
    """out in ``input``'s memory format; weight [G*KH*KW, R], bias [G*KH*KW] or None."""
    n, c = input.shape[:2]
    out = _like((n, c, hidden.shape[2], hidden.shape[3]), input)
    kernels.fused_forward(
        _view(input),
        _view(hidden),
        _view(weight),
        None if bias is None else _view(bias),
        out.numpy(),
        kernel_size,
        stride,
        padding,
        dilation,
    )
    return out


def fused_backward(
    grad_out: Tensor,
    input: Tensor,
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size,
    stride,
    padding,
    dilation,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_input, grad_hidden, grad_weight, grad_bias): the two maps in grad_out's memory
    format."""
    grad_input = _like(tuple(input.shape), grad_out)
    grad_hidden = _like(tuple(hidden.shape), grad_out)
    grad_weight, grad_bias = kernels.fused_backward(
        _view(grad_out),
        _view(input),
        _view(hidden),
        _view(weight),
        None if bias is None else _view(bias),
        grad_input.numpy(),
        grad_hidden.numpy(),
        kernel_size,
        stride,
        padding,
        dilation,
    )
    return grad_input, grad_hidden, torch.from_numpy(grad_weight), torch.from_numpy(grad_bias)
