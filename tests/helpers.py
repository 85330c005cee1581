"""Op cases shared by the test modules of ``involution.ops`` (CPU, CUDA simulator, GPU): random
operands in a chosen memory layout, and outputs plus gradients through the op and through the
unfold spec; the same for the fused op (``fused_involution2d``) against its composition."""

from __future__ import annotations

import torch

from involution.ops import fused_involution2d, involution2d, involution2d_reference, output_size

# (N, C, G, H, W, (KH, KW), stride, dilation): the numba_cpu layout each case exercises is noted
# (NHWC kernels run when a group has >= 8 channels and output rows are short).
CASES = [
    (2, 4, 1, 7, 6, (3, 3), 1, 1),  # odd x even, one group
    (1, 4, 4, 8, 9, (5, 5), 2, 1),  # batch 1, G = C, stride 2
    (2, 6, 6, 9, 7, (7, 7), 3, 2),  # K 7, stride 3, dilation 2, G = C
    (2, 16, 1, 6, 7, (5, 5), 2, 2),  # 16 channels per group, K 5 (NHWC)
    (1, 12, 1, 10, 8, (1, 1), 1, 1),  # K 1, 12 per group (NCHW: too few taps)
    (2, 8, 8, 5, 5, (5, 5), 1, 2),  # G = C, dilation 2 with padding 4 > half the image
    (1, 24, 2, 11, 12, (7, 7), 1, 1),  # K 7, 12 per group: one 8-block + 4 remainder (NHWC)
    (1, 16, 16, 7, 8, (3, 3), 3, 1),  # G = C, stride 3
    (1, 3, 1, 6, 5, (5, 5), 2, 2),  # odd channel count
    (1, 16, 1, 4, 40, (3, 3), 1, 1),  # wide rows, 16 per group, K 3 (NCHW)
    (2, 8, 2, 9, 10, (3, 5), (2, 1), (1, 2)),  # non-square kernel, per-axis stride/dilation
    (1, 8, 1, 9, 7, (5, 7), 2, 1),  # non-square, exactly one 8-block (NHWC), stride 2
    # groups of 16 channels and multiples (numba_cpu's blocked kernels):
    (2, 32, 2, 9, 11, (7, 7), 1, 1),  # RedNet's K 7, two groups, odd x odd
    (1, 16, 1, 10, 13, (5, 5), 2, 2),  # stride 2, dilation 2
    (1, 48, 1, 7, 6, (3, 3), 3, 1),  # three 16-channel blocks in one group, stride 3
    (2, 32, 2, 6, 9, (5, 3), (2, 1), (1, 2)),  # non-square, per-axis stride and dilation
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def make_case(case, dtype=torch.float64, layout="contiguous", seed=0):
    """Random (never zero) input and kernel for a case, in the requested memory layout."""
    n, c, g, h, w, (kh, kw), stride, dilation = case
    stride, dilation = _pair(stride), _pair(dilation)
    padding = (dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2)
    ho = output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = output_size(w, kw, stride[1], padding[1], dilation[1])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    k = torch.randn(n, g, kh, kw, ho, wo, generator=gen, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        # x: a strided slice of a wider tensor; kernel: a permuted view of another layout
        wide = torch.randn(n, c, h, 2 * w, generator=gen, dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
        k = k.permute(0, 1, 4, 5, 2, 3).contiguous().permute(0, 1, 4, 5, 2, 3)
        assert not x.is_contiguous() and not k.is_contiguous()
    return x, k, stride, padding, dilation


def spec_with_grads(x, k, stride, padding, dilation, grad_out):
    """Output and gradients by autograd through the unfold spec (independent of the op)."""
    x = x.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    out = involution2d_reference(x, k, stride, padding, dilation)
    gx, gk = torch.autograd.grad(out, (x, k), grad_out)
    return out.detach(), gx, gk


def op_with_grads(x, k, stride, padding, dilation, grad_out, backend):
    """Output and gradients by autograd through ``involution2d`` on ``backend``."""
    x = x.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    out = involution2d(x, k, stride, padding, dilation, backend)
    gx, gk = torch.autograd.grad(out, (x, k), grad_out)
    return out.detach(), gx, gk


def assert_half_precision(backend, dtype, device="cpu"):
    """Half storage, float32 accumulation: ``backend``'s output and gradients in ``dtype`` on
    ``device`` are as close to the float64 spec of the same (rounded) operands as the storage
    allows."""
    x, k, stride, padding, dilation = make_case(CASES[6], torch.float64)
    grad_out = torch.randn(*x.shape[:2], *k.shape[-2:], dtype=x.dtype)
    xs, ks, gs = (t.to(dtype) for t in (x, k, grad_out))
    want = spec_with_grads(xs.double(), ks.double(), stride, padding, dilation, gs.double())
    got = op_with_grads(
        xs.to(device), ks.to(device), stride, padding, dilation, gs.to(device), backend
    )
    eps = torch.finfo(dtype).eps
    for a, b in zip(got, want):
        assert a.dtype == dtype and a.device.type == torch.device(device).type
        scale = b.abs().max().item()
        torch.testing.assert_close(a.cpu().double(), b, rtol=4 * eps, atol=4 * eps * scale)


def tolerances(dtype):
    """assert_close tolerances of a backend against the spec in ``dtype``."""
    return (
        {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    )


# The fused op: (N, C, G, R, H, W, K, stride, dilation); R: the hidden map's channels. Groups of
# 16 channels run numba_cpu's fused kernels, narrower groups the composition.
FUSED_CASES = [
    (2, 32, 2, 8, 9, 11, 7, 1, 1),  # K 7, two 16-channel groups, odd x odd
    (1, 16, 1, 5, 10, 13, 5, 2, 1),  # stride 2 (the pooled generation's grid), odd sizes
    (1, 16, 1, 4, 9, 8, 5, 1, 2),  # dilation 2
    (3, 48, 3, 12, 7, 6, 3, 3, 1),  # stride 3, batch 3 (bands of rows with N < 2 x threads)
    (1, 8, 2, 3, 6, 5, 3, 1, 1),  # 4 channels per group: the composition
]


def make_fused_case(case, dtype=torch.float64, layout="contiguous", seed=0):
    """Random input, hidden map, weight [G*K*K, R] and bias for a fused case, and its stride,
    padding and dilation pairs."""
    n, c, g, r, h, w, k, stride, dilation = case
    pad = dilation * (k - 1) // 2
    ho = output_size(h, k, stride, pad, dilation)
    wo = output_size(w, k, stride, pad, dilation)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    hidden = torch.randn(n, r, ho, wo, generator=gen, dtype=dtype)
    weight = torch.randn(g * k * k, r, generator=gen, dtype=dtype) / r**0.5
    bias = torch.randn(g * k * k, generator=gen, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        hidden = hidden.contiguous(memory_format=torch.channels_last)
    return (x, hidden, weight, bias), (stride, stride), (pad, pad), (dilation, dilation)


def fused_with_grads(operands, kernel_size, stride, padding, dilation, grad_out, backend):
    """Output and the four gradients through ``fused_involution2d`` on ``backend``."""
    leaves = [t.detach().clone().requires_grad_() for t in operands]
    out = fused_involution2d(*leaves, kernel_size, stride, padding, dilation, backend)
    return (out.detach(), *torch.autograd.grad(out, leaves, grad_out))


def composed_with_grads(operands, kernel_size, stride, padding, dilation, grad_out):
    """The same through the composition it stands for: the kernel as a matrix product, then the
    unfold spec (independent of the fused kernels)."""
    x, hidden, weight, bias = leaves = [t.detach().clone().requires_grad_() for t in operands]
    n, r, ho, wo = hidden.shape
    kernel = torch.einsum("tr,nrp->ntp", weight, hidden.reshape(n, r, -1)) + bias[:, None]
    kernel = kernel.reshape(n, -1, kernel_size, kernel_size, ho, wo)
    out = involution2d_reference(x, kernel, stride, padding, dilation)
    return (out.detach(), *torch.autograd.grad(out, leaves, grad_out))
