"""Entry points of the CPU kernels.

- ``forward``, ``grad_input``, ``grad_kernel``: the op's three kernels for any group width, in
  the layout the caller chose with ``involution.kernels.cpu.policy`` (the flat-plane NCHW kernel
  where it applies, else the ``layout`` kernel);
- ``blocked_forward``, ``blocked_grad_input``, ``blocked_grad_kernel``: the same three for groups
  of a multiple of LANES channels (``blocked_applies``), on operands of any strides;
- ``fused_forward``, ``fused_backward``: the kernel generation's last 1x1 convolution fused with
  the aggregation (``fused``), same group widths.

Each compiles a new signature with LLVM's SLP vectoriser on, which the register tiles need.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
from numba import get_num_threads
from numba.core import config as numba_config

from involution.kernels.cpu import cache as _cache
from involution.kernels.cpu import fused
from involution.kernels.cpu.blocked import (
    forward_blocked,
    grad_input_blocked,
    grad_kernel_blocked,
)
from involution.kernels.cpu.flat import flat_applies, grad_kernel_nchw_flat, taps_nchw_flat
from involution.kernels.cpu.nchw import forward_nchw, grad_input_nchw, grad_kernel_nchw
from involution.kernels.cpu.nhwc import forward_nhwc, grad_input_nhwc, grad_kernel_nhwc
from involution.kernels.cpu.policy import bands as policy_bands
from involution.kernels.cpu.policy import flat_rows_per_task
from involution.kernels.cpu.simd import LANES

LAYOUTS = ("nchw", "nhwc")

# before any kernel is loaded from the disk cache: drop entries compiled from other sources
_cache.refresh(
    _cache.cached_dispatchers(
        m for name, m in list(sys.modules.items()) if name.startswith("involution.kernels.cpu.")
    )
)

_KERNELS = {  # layout -> op -> kernel
    "nchw": {
        "forward": forward_nchw,
        "grad_input": grad_input_nchw,
        "grad_kernel": grad_kernel_nchw,
    },
    "nhwc": {
        "forward": forward_nhwc,
        "grad_input": grad_input_nhwc,
        "grad_kernel": grad_kernel_nhwc,
    },
}


_FLAT = {  # op -> (kernel, trailing arguments)
    "forward": (taps_nchw_flat, (1,)),
    "grad_input": (taps_nchw_flat, (-1,)),
    "grad_kernel": (grad_kernel_nchw_flat, ()),
}


def _args(stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    return int(sh), int(sw), int(ph), int(pw), int(dh), int(dw)


def _dispatch(name, operands, stride, padding, dilation, layout, flat) -> None:
    """Run op ``name`` on ``operands`` (its three arrays, output last): the flat NCHW kernel where
    it applies (``flat`` None) or is asked for, else the ``layout`` kernel."""
    fmap = operands[2] if name == "grad_input" else operands[0]  # shaped like x
    kmap = operands[2] if name == "grad_kernel" else operands[1]  # [N, G, KH, KW, Ho, Wo]
    n, (h, w) = fmap.shape[0], (fmap.shape[1:3] if layout == "nhwc" else fmap.shape[2:])
    g, ho, wo = kmap.shape[1], kmap.shape[4], kmap.shape[5]
    applies = layout == "nchw" and flat_applies(stride, w, wo)
    if flat and not applies:
        raise ValueError(
            f"flat=True needs layout 'nchw', stride (1, 1) and an output as wide as the input, "
            f"got layout {layout!r}, stride {tuple(stride)}, widths {w} -> {wo}"
        )
    sh, sw, ph, pw, dh, dw = _args(stride, padding, dilation)
    if flat is None:
        flat = applies
    if flat:
        rows = flat_rows_per_task(n * g, h if name == "grad_input" else ho, w)
        kernel, extra = _FLAT[name]
        _run(kernel, *operands, ph, pw, dh, dw, rows, *extra)
    else:
        _run(_KERNELS[layout][name], *operands, sh, sw, ph, pw, dh, dw)


@contextlib.contextmanager
def _slp_vectorize():
    """Numba leaves LLVM's SLP vectoriser off by default; the NHWC kernels need it to turn the
    8-scalar accumulator tuples of ``_fma8`` into vector FMAs (about 2x faster), so the kernels
    are compiled (or loaded from the cache) with it switched on, for this compilation only."""
    old = numba_config.SLP_VECTORIZE
    numba_config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        numba_config.SLP_VECTORIZE = old


_COMPILED: set = set()


def _run(kernel, *args) -> None:
    key = (
        kernel,
        tuple((a.dtype, a.ndim, a.flags.c_contiguous) for a in args if isinstance(a, np.ndarray)),
    )
    if key in _COMPILED:
        kernel(*args)
        return
    with _slp_vectorize():  # the first call of a signature compiles it
        kernel(*args)
    _COMPILED.add(key)


def forward(
    x, kernel, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), layout="nchw", flat=None
):
    """Write the involution of ``x`` with ``kernel`` into ``out`` (layout "nchw" or "nhwc";
    ``flat`` None picks the flat-plane NCHW kernels wherever they apply)."""
    _dispatch("forward", (x, kernel, out), stride, padding, dilation, layout, flat)
    return out


def grad_input(
    grad_out,
    kernel,
    grad_x,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    layout="nchw",
    flat=None,
):
    """Write d(loss)/d(x) into ``grad_x`` (the shape of x, in ``layout``)."""
    _dispatch("grad_input", (grad_out, kernel, grad_x), stride, padding, dilation, layout, flat)
    return grad_x


def grad_kernel(
    grad_out, x, grad_k, stride=(1, 1), padding=(0, 0), dilation=(1, 1), layout="nchw", flat=None
):
    """Write d(loss)/d(kernel) into ``grad_k`` [N,G,KH,KW,Ho,Wo]; also the windowed dot product
    sum_{c in g} grad_out[c, i, j] * x[c, i*sh-ph+u*dh, j*sw-pw+v*dw] (local attention logits)."""
    _dispatch("grad_kernel", (grad_out, x, grad_k), stride, padding, dilation, layout, flat)
    return grad_k


# ------------------------------------------------------------------------------------------------
# Blocked kernels (groups of a multiple of LANES channels; operands of any strides)
# ------------------------------------------------------------------------------------------------


def _blocked(kernel, operands, stride, padding, dilation, rows, tasks):
    sh, sw, ph, pw, dh, dw = _args(stride, padding, dilation)
    if tasks is None:
        tasks = policy_bands(operands[0].shape[0], rows, get_num_threads())
    _run(kernel, *operands, sh, sw, ph, pw, dh, dw, tasks)


def blocked_forward(x, kernel, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), bands=None):
    """out [N, C, Ho, Wo] = the involution of x [N, C, H, W] with the C-contiguous kernel
    [N, G, KH, KW, Ho, Wo]; x and out of any strides (NCHW, NHWC viewed as NCHW, ...).
    ``bands``: tasks per image (None: ``policy.bands``)."""
    _blocked(forward_blocked, (x, kernel, out), stride, padding, dilation, kernel.shape[4], bands)
    return out


def blocked_grad_input(
    grad_out, kernel, grad_x, stride=(1, 1), padding=(0, 0), dilation=(1, 1), bands=None
):
    """grad_x [N, C, H, W] (any strides) from grad_out (any strides) and the kernel."""
    operands = (grad_out, kernel, grad_x)
    _blocked(grad_input_blocked, operands, stride, padding, dilation, grad_x.shape[2], bands)
    return grad_x


def blocked_grad_kernel(
    grad_out, x, grad_k, stride=(1, 1), padding=(0, 0), dilation=(1, 1), bands=None
):
    """grad_k [N, G, KH, KW, Ho, Wo] (C-contiguous) from grad_out and x (any strides)."""
    operands = (grad_out, x, grad_k)
    _blocked(grad_kernel_blocked, operands, stride, padding, dilation, grad_k.shape[4], bands)
    return grad_k


def _round_up(value: int) -> int:
    return -(-value // LANES) * LANES


def _fused_weights(weight, bias, dtype):
    """weight [T, R] and bias [T] (or None) as the fused kernels take them: weight_t [R, Tp],
    weight [Tp, Rp] and bias [Tp], zero-padded to whole vectors."""
    taps, reduced = weight.shape
    tp, rp = _round_up(taps), _round_up(reduced)
    weight_t = np.zeros((reduced, tp), dtype)
    weight_t[:, :taps] = weight.T
    padded = np.zeros((tp, rp), dtype)
    padded[:taps, :reduced] = weight
    bias_p = np.zeros(tp, dtype)
    if bias is not None:
        bias_p[:taps] = bias
    return weight_t, padded, bias_p


def fused_forward(
    x,
    hidden,
    weight,
    bias,
    out,
    kernel_size,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    bands=None,
):
    """out = the involution of x with kernel[n, t, i, j] = bias[t] + weight[t] . hidden[n, :, i, j]
    (t = (g * KH + u) * KW + v; weight [G*KH*KW, R], bias [G*KH*KW] or None), never making the
    kernel tensor. x, hidden [N, R, Ho, Wo] and out of any strides."""
    kh, kw = kernel_size
    groups = weight.shape[0] // (kh * kw)
    weight_t, _, bias_p = _fused_weights(weight, bias, x.dtype)
    sh, sw, ph, pw, dh, dw = _args(stride, padding, dilation)
    tasks = policy_bands(x.shape[0], hidden.shape[2], get_num_threads()) if bands is None else bands
    _run(
        fused.fused_forward,
        x,
        hidden,
        weight_t,
        bias_p,
        out,
        groups,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        dh,
        dw,
        tasks,
    )
    return out


def fused_backward(
    grad_out,
    x,
    hidden,
    weight,
    bias,
    grad_x,
    grad_hidden,
    kernel_size,
    stride=(1, 1),
    padding=(0, 0),
    dilation=(1, 1),
    bands=None,
):
    """The gradients of ``fused_forward``: writes grad_x and grad_hidden (any strides) and
    returns (grad_weight [G*KH*KW, R], grad_bias [G*KH*KW])."""
    kh, kw = kernel_size
    taps, reduced = weight.shape
    groups = taps // (kh * kw)
    weight_t, padded, bias_p = _fused_weights(weight, bias, x.dtype)
    sh, sw, ph, pw, dh, dw = _args(stride, padding, dilation)
    threads = get_num_threads()
    partials = np.zeros(fused.partials_shape(threads, *padded.shape), x.dtype)
    halo = ((kh - 1) * dh + sh - 1) // sh
    tasks = policy_bands(x.shape[0], hidden.shape[2], threads, halo) if bands is None else bands
    _run(
        fused.fused_backward,
        grad_out,
        x,
        hidden,
        weight_t,
        padded,
        bias_p,
        grad_x,
        grad_hidden,
        partials,
        groups,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        dh,
        dw,
        tasks,
    )
    total = partials.sum(axis=0)
    grad_bias = total[:taps, padded.shape[1] :].sum(axis=1)
    return total[:taps, :reduced].copy(), grad_bias
