"""Memory formats of 4-D operands, shared by the registration and the backends' layout policies."""

from __future__ import annotations

import torch
from torch import Tensor


def is_channels_last(t: Tensor) -> bool:
    """True for a 4-D tensor laid out NHWC (and not also plainly contiguous)."""
    return (
        t.dim() == 4
        and t.is_contiguous(memory_format=torch.channels_last)
        and not t.is_contiguous()
    )


def memory_format(t: Tensor) -> torch.memory_format:
    """channels_last for an NHWC tensor, else contiguous_format."""
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format
