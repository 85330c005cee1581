"""``CeilAvgPool2d``: the average pool of the strided layers' kernel generation (ceil mode)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CeilAvgPool2d(nn.Module):
    """``nn.AvgPool2d(s, s, ceil_mode=True)``: mean over each s x s window, the windows at odd
    borders averaging only the pixels they cover, so the output is ceil(H/s) x ceil(W/s).

    Written as zero padding to a multiple of s + a plain average pool, divided by the covered
    fraction: torch.compile (inductor, torch 2.14) gets the backward of ``ceil_mode=True`` wrong
    at odd sizes; this form compiles correctly (tests/test_ops.py checks compiled gradients).
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        h, w = x.shape[-2:]
        pad = (0, (-w) % s, 0, (-h) % s)
        if pad[1] == 0 and pad[3] == 0:
            # no padded copy: the pool's backward would keep it alive (as big as x) for nothing
            return F.avg_pool2d(x, s, s)
        pooled = F.avg_pool2d(F.pad(x, pad), s, s)
        covered = F.avg_pool2d(F.pad(x.new_ones(1, 1, h, w), pad), s, s)
        return pooled / covered

    def extra_repr(self) -> str:
        return f"stride={self.stride}"
