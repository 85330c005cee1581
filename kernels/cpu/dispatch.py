"""Entry points of the CPU kernels: ``forward``, ``grad_input``, ``grad_kernel``.

Each picks the kernel for its call (the flat-plane NCHW kernel where it applies, else the
``layout`` kernel the caller chose with ``involution.kernels.cpu.policy``) and compiles each new
signature with LLVM's SLP vectoriser on, which the register-blocked NHWC loops need.
"""

from __future__ import annotations

import contextlib

from numba.core import config as numba_config

from involution.kernels.cpu.flat import flat_applies, grad_kernel_nchw_flat, taps_nchw_flat
from involution.kernels.cpu.nchw import forward_nchw, grad_input_nchw, grad_kernel_nchw
from involution.kernels.cpu.nhwc import forward_nhwc, grad_input_nhwc, grad_kernel_nhwc
from involution.kernels.cpu.policy import flat_rows_per_task

LAYOUTS = ("nchw", "nhwc")

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
    key = (kernel, tuple((a.dtype, a.ndim, a.flags.c_contiguous) for a in args[:3]))
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
