"""The involution operator: ``involution2d``, the windowed dot product ``window_dot``, and their
backends.

``involution2d(input [N,C,H,W], kernel [N,G,KH,KW,Ho,Wo], stride, padding, dilation, backend)``::

    out[n,c,i,j] = sum_{u,v} kernel[n, c//(C/G), u, v, i, j] * input[n, c, i*s-p+u*d, j*s-p+v*d]

(zero outside the image; ``padding`` defaults to ``dilation*(K-1)//2``; Ho, Wo follow the
convolution formula.) Arguments are checked once, in plain Python (``_args.normalize``, shared
with ``window_dot``), then the call goes to one ``torch.library`` custom op,
``torch.ops.involution.involution2d``, whose gradients are two more ops
(``involution2d_grad_input``, ``involution2d_grad_kernel``); see ``involution.ops._library``.

Backends (``BACKENDS``; one module each, listed once in ``_backends.BACKENDS``):

- ``"reference"`` (``_reference``): unfold/fold, any device, any floating dtype; the spec
  (``involution2d_reference``).
- ``"numba_cpu"`` (``_numba_cpu``): the parallel Numba kernels of ``involution.kernels.cpu``;
  float32 and float64.
- ``"numba_cuda"`` (``_numba_cuda``): the numba-cuda kernels of ``involution.kernels.cuda`` on
  torch's CUDA memory and current stream; float32, float16, bfloat16 (accumulating in float32) and
  float64; on a GPU numba-cuda can launch kernels on (not ROCm, not without a driver it loads).
- ``"torch"`` (``_torch``): KH*KW shifted multiply-accumulates over views of the input, in place,
  on any device and floating dtype, with no temporary beyond one output-sized buffer; under
  ``torch.compile`` Inductor sees (and fuses) its taps.
- ``"auto"``: the first backend, in the order numba_cuda, numba_cpu, torch, reference, that runs
  the tensors' device and dtype (so torch for e.g. MPS, XPU, ROCm, CPU half precision, meta
  tensors, or a CUDA device numba-cuda refuses; it then logs once why, naming each refusal).

Each backend module says what it runs (``can_run``), owns its layout policy
(``grad_out_format``) and implements the three ops; the registration names none. A new backend is
one new module implementing ``_backends.Backend`` and one entry in ``_backends.BACKENDS``.

``fused_involution2d`` (``involution.ops.fused``) is ``involution2d`` with the kernel generated from
a hidden map by a 1x1 convolution, in one op: on ``numba_cpu`` (groups of a multiple of 16
channels) the kernel tensor is never made; elsewhere it runs as that composition.

The output has the memory format of ``input`` (channels_last in, channels_last out, like
convolutions); the gradient of ``input`` has the memory format of the incoming gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from involution.ops import _library, _numba_cpu, _numba_cuda, fused
from involution.ops._args import normalize, output_size
from involution.ops._backends import NAMES as BACKENDS
from involution.ops._backends import resolve_backend
from involution.ops._reference import involution2d_reference
from involution.ops.fused import fused_involution2d, fused_kernel_runs
from involution.ops.window_dot import window_dot, window_dot_key_grad

__all__ = [
    "BACKENDS",
    "CPU_DTYPES",
    "CUDA_DTYPES",
    "fused_involution2d",
    "fused_kernel_runs",
    "involution2d",
    "involution2d_reference",
    "output_size",
    "resolve_backend",
    "window_dot",
    "window_dot_key_grad",
]

CPU_DTYPES = _numba_cpu.DTYPES
CUDA_DTYPES = _numba_cuda.DTYPES

# after every op and overload is defined (an overload changes its packet's hash)
_library.register_flops()
fused.register_flops()


def involution2d(
    input: Tensor,
    kernel: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] = 1,
    backend: str = "auto",
) -> Tensor:
    """Involution of ``input`` with a per-pixel, per-group ``kernel`` (Li et al., CVPR 2021).

    ``out[n,c,i,j] = sum_{u,v} kernel[n, c//(C/G), u, v, i, j] * input[n, c, i*s-p+u*d, j*s-p+v*d]``
    with zero outside the image: the C channels split into G groups of C/G that share their
    group's KH x KW kernel at each output pixel. Differentiable (twice), ``torch.compile``-able
    without graph breaks, autocast-aware, and counted by ``torch.utils.flop_counter``.

    Args:
        input (Tensor[N, C, H, W]): the feature map, any floating dtype.
        kernel (Tensor[N, G, KH, KW, Ho, Wo]): one KH x KW kernel per sample, group and output
            pixel; same device and dtype as ``input``; G must divide C.
        stride (int or Tuple[int, int]): step between windows (>= 1). Default: 1.
        padding (int or Tuple[int, int], optional): zero padding on each side (>= 0). Default:
            None, meaning ``dilation * (K - 1) // 2`` per axis (same size at stride 1, odd K).
        dilation (int or Tuple[int, int]): spacing between kernel taps (>= 1). Default: 1.
        backend (str): one of ``BACKENDS``: "auto" (default: the fastest that runs the tensors'
            device and dtype), "numba_cuda", "numba_cpu", "torch" or "reference".

    Returns:
        Tensor[N, C, Ho, Wo]: the output, in ``input``'s memory format (channels_last in,
        channels_last out); Ho, Wo follow the convolution formula (``output_size``).

    Raises:
        TypeError: a non-tensor operand, a non-floating or mismatched dtype, a stride, padding or
            dilation that is not an int or a pair of ints, or a dtype the backend does not run.
        ValueError: a wrong rank or shape, a negative padding, a stride or dilation below 1, an
            unknown backend, or a backend that does not run the tensors' device. Every message is
            one line naming the argument.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 16, 8, 8)
        >>> kernel = torch.randn(2, 4, 3, 3, 8, 8)  # G = 4 groups of 4 channels
        >>> involution2d(x, kernel).shape
        torch.Size([2, 16, 8, 8])
        >>> involution2d(x, kernel[..., ::2, ::2], stride=2).shape
        torch.Size([2, 16, 4, 4])
    """
    args = normalize(
        [("input", input, "[N,C,H,W]"), ("kernel", kernel, "[N,G,KH,KW,Ho,Wo]")],
        None,
        stride,
        padding,
        dilation,
        backend,
    )
    n, c, h, w = input.shape
    g, (kh, kw) = kernel.shape[1], args.kernel_size
    if g < 1 or c % g:
        raise ValueError(
            f"kernel groups G={g} (kernel.shape[1]) must divide the input channels C={c}"
        )
    ho, wo = args.output_size((h, w))
    if ho < 1 or wo < 1:
        raise ValueError(
            f"input spatial size {(h, w)} is too small for kernel {(kh, kw)} with padding "
            f"{args.padding} and dilation {args.dilation}: output size would be {(ho, wo)}"
        )
    expected = (n, g, kh, kw, ho, wo)
    if tuple(kernel.shape) != expected:
        raise ValueError(
            f"kernel shape must be (N, G, KH, KW, Ho, Wo) = {expected}, got {tuple(kernel.shape)}"
        )
    return _library.involution2d_op(
        input, kernel, args.stride, args.padding, args.dilation, args.backend
    )
