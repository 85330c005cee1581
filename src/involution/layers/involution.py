"""``Involution2d``: a per-pixel kernel generated from the input, applied to the input."""

from __future__ import annotations

import torch
from torch import nn

from involution.layers.checks import check_operator_fit, check_operator_spec
from involution.layers.folding import conv_bn
from involution.layers.pool import CeilAvgPool2d
from involution.ops import fused_involution2d, involution2d


class Involution2d(nn.Module):
    """Involution: a KxK kernel generated per pixel from the input itself, shared by G channel
    groups (Li et al., CVPR 2021).

    Kernel generation follows the official code: (avg-pool by the stride, ceil mode so that odd
    input sizes give exactly the aggregation's Ho x Wo) -> 1x1 conv C -> C/r -> BN -> ReLU ->
    1x1 conv C/r -> K*K*G (with bias); the aggregation is ``involution2d``.

    Memory (``recompute_kernel=True``, the default): the generated kernel [N, G, K, K, Ho, Wo]
    holds K*K*G/C (about 3x for K = 7, 16 channels per group) the elements of the layer's input.
    The layer never keeps it: the last 1x1 conv and the aggregation are one op,
    ``fused_involution2d``, which keeps its operands (the input and the C/r-channel hidden map)
    and makes the kernel again in backward. Where its backend has a fused kernel (``numba_cpu``,
    groups of a multiple of 16 channels) the kernel is made a row at a time in cache and never
    exists as a tensor at all, forward or backward; elsewhere the op makes it, uses it and drops
    it. ``recompute_kernel=False`` keeps the plain graph: the kernel made by a batched product
    and applied by ``involution2d``, kept for backward (what the fused op is tested against).

    Args:
        channels: C, input and output channels.
        kernel_size: K, odd.
        stride: the aggregation's stride (the kernel map is generated at the output's size).
        group_channels: channels per group (C/G; must divide C), None for one group.
        reduction_ratio: r of the kernel generation's bottleneck C -> C/r.
        dilation: of the KxK window.
        backend: the ops' backend ("auto", "reference", "numba_cpu", "numba_cuda").
        recompute_kernel: keep no kernel tensor for backward (the fused op), or keep it.

    Returns (forward):
        [N, C, Ho, Wo] for an input [N, C, H, W], Ho = ceil(H / stride) (same padding), in the
        input's memory format.

    Raises:
        ValueError: at construction, a one-line message naming the hyperparameter that does not
            fit ``channels`` (e.g. ``group_channels`` not dividing it, an even ``kernel_size``).

    Example:
        >>> layer = Involution2d(64, kernel_size=7, group_channels=16)
        >>> layer(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        stride: int = 1,
        group_channels: int | None = 16,
        reduction_ratio: int = 4,
        dilation: int = 1,
        backend: str = "auto",
        recompute_kernel: bool = True,
    ) -> None:
        super().__init__()
        check_operator_spec(
            {"dilation": dilation, "backend": backend, "recompute_kernel": recompute_kernel}
        )
        check_operator_fit(channels, kernel_size, group_channels, reduction_ratio)
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.backend = backend
        self.recompute_kernel = recompute_kernel
        self.groups = 1 if group_channels is None else channels // group_channels
        reduced = channels // reduction_ratio
        self.pool = CeilAvgPool2d(stride) if stride > 1 else nn.Identity()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=False)
        self.reduce_bn = nn.BatchNorm2d(reduced)
        self.act = nn.ReLU(inplace=True)
        self.span = nn.Conv2d(reduced, kernel_size * kernel_size * self.groups, 1)

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The C/r-channel map the kernel is generated from (the BN folded in eval mode)."""
        return self.act(conv_bn(self.pool(x), self.reduce, self.reduce_bn))

    def _span(self, hidden: torch.Tensor) -> torch.Tensor:
        """The kernel [N, G, K, K, Ho, Wo] from the hidden map: the last 1x1 conv as one batched
        matrix product, whose [N, K*K*G, Ho*Wo] output is the kernel's layout without a copy
        (NCHW or channels_last hidden map alike). oneDNN's 1x1 conv is slow at these shapes (few
        input channels, many output channels, an NCHW output); the layer rows of the operator
        benchmark (docs/benchmarks.md) measure this path as ``recompute_kernel=False``."""
        n, reduced, ho, wo = hidden.shape
        weight = self.span.weight.view(1, -1, reduced).expand(n, -1, -1)
        rows = hidden.flatten(2)  # [N, C/r, Ho*Wo]: a view for NCHW and channels_last
        bias = self.span.bias
        kernel = (
            torch.bmm(weight, rows) if bias is None else torch.baddbmm(bias[:, None], weight, rows)
        )
        k = self.kernel_size
        return kernel.view(n, self.groups, k, k, ho, wo)

    def generate_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel kernels [N, G, K, K, Ho, Wo] that the aggregation applies."""
        return self._span(self._hidden(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self._hidden(x)
        if not self.recompute_kernel:
            return involution2d(
                x, self._span(hidden), self.stride, None, self.dilation, self.backend
            )
        weight = self.span.weight.view(self.span.weight.shape[0], -1)
        return fused_involution2d(
            x,
            hidden,
            weight,
            self.span.bias,
            self.kernel_size,
            self.stride,
            None,
            self.dilation,
            self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"groups={self.groups}, dilation={self.dilation}, backend={self.backend!r}, "
            f"recompute_kernel={self.recompute_kernel}"
        )
