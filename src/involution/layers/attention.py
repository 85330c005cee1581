"""``LocalSelfAttention2d``: SASA-style local self-attention on the involution ops."""

from __future__ import annotations

import torch
from torch import nn

from involution.layers.checks import check_divides, check_operator_fit, check_operator_spec
from involution.layers.pool import CeilAvgPool2d
from involution.ops import involution2d
from involution.ops.window_dot import window_dot


class LocalSelfAttention2d(nn.Module):
    """SASA-style local self-attention (Ramachandran et al., 2019) built from the involution op.

    1x1 query/key/value projections; each of ``heads`` heads attends over a KxK window (dilation
    ``dilation``) around its pixel. Logits = q . k / sqrt(d) + q . r / sqrt(d), where the relative
    position embedding r of a window offset (u, v) is split between rows and columns: the first
    d//2 channels of each head carry a row embedding r_row[u], the other d - d//2 a column
    embedding r_col[v]. Window positions outside the image are masked out of the softmax.

    - the logits' content term is the windowed dot product ``window_dot`` (involution's
      grad_kernel pattern), with heads as groups;
    - the aggregation of values with the softmax weights is ``involution2d`` with heads as groups.

    With ``stride > 1`` the queries are computed from the input average-pooled by the stride (ceil
    mode; the same grid as involution's kernel map), keys and values at full resolution, so the
    layer downsamples like a strided convolution does.

    Args:
        channels: C, input and output channels (divisible by ``heads``).
        kernel_size: K, odd: the attention window.
        stride: output stride (queries from the pooled input).
        heads: attention heads (groups of the involution op).
        dilation: of the window.
        backend: the involution op's backend ("auto", "reference", "numba_cpu", "numba_cuda").

    Returns (forward):
        [N, C, Ho, Wo] for an input [N, C, H, W], Ho = ceil(H / stride).

    Raises:
        ValueError: at construction, one line naming ``heads``, ``kernel_size`` or ``dilation``
            when it does not fit.

    Example:
        >>> attention = LocalSelfAttention2d(64, kernel_size=7, heads=8)
        >>> attention(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        stride: int = 1,
        heads: int = 8,
        dilation: int = 1,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_operator_spec({"heads": heads, "dilation": dilation, "backend": backend})
        check_operator_fit(channels, kernel_size)
        check_divides("heads", heads, channels)
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.heads = heads
        self.dilation = dilation
        self.backend = backend
        self.head_channels = channels // heads
        self.row_channels = self.head_channels // 2
        self.pool = CeilAvgPool2d(stride) if stride > 1 else nn.Identity()
        self.query = nn.Conv2d(channels, channels, 1, bias=False)
        self.key = nn.Conv2d(channels, channels, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)
        std = self.head_channels**-0.5
        self.rel_rows = nn.Parameter(torch.randn(heads, self.row_channels, kernel_size) * std)
        self.rel_cols = nn.Parameter(
            torch.randn(heads, self.head_channels - self.row_channels, kernel_size) * std
        )

    def _window_mask(
        self, height: int, width: int, ho: int, wo: int, device: torch.device
    ) -> torch.Tensor:
        """[K, K, Ho, Wo] True where the window position lies inside the image."""
        k, s, d = self.kernel_size, self.stride, self.dilation
        p = d * (k - 1) // 2
        offsets = torch.arange(k, device=device) * d - p

        def axis(size: int, out: int) -> torch.Tensor:
            pos = torch.arange(out, device=device)[None, :] * s + offsets[:, None]  # [K, out]
            return (pos >= 0) & (pos < size)

        return axis(height, ho)[:, None, :, None] & axis(width, wo)[None, :, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k, g = self.kernel_size, self.heads
        query = self.query(self.pool(x)) * self.head_channels**-0.5
        key, value = self.key(x), self.value(x)
        ho, wo = query.shape[-2:]
        logits = window_dot(query, key, k, self.stride, None, self.dilation, g, self.backend)
        heads_query = query.view(n, g, self.head_channels, ho, wo)
        rows = torch.einsum(
            "ngcij,gcu->nguij", heads_query[:, :, : self.row_channels], self.rel_rows
        )
        cols = torch.einsum(
            "ngcij,gcv->ngvij", heads_query[:, :, self.row_channels :], self.rel_cols
        )
        logits = logits + rows[:, :, :, None] + cols[:, :, None]
        mask = self._window_mask(h, w, ho, wo, x.device)
        logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits.view(n, g, k * k, ho, wo), dim=2).view(n, g, k, k, ho, wo)
        return involution2d(
            value, weights.to(value.dtype), self.stride, None, self.dilation, self.backend
        )

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"heads={self.heads}, dilation={self.dilation}, backend={self.backend!r}"
        )
