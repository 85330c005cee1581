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


def fresh(t: Tensor, fmt: torch.memory_format = torch.contiguous_format) -> Tensor:
    """``t`` in memory format ``fmt`` as a tensor of its own, never a view: an op's result must
    be, or autograd refuses an in-place op on it (``relu_`` after the layer). A backend may hand
    back a view (an unfold's reshape; at 1x1 maps ``contiguous`` returns a permuted view as it
    is, being both layouts at once); only then is it copied."""
    out = t.contiguous(memory_format=fmt)
    return out.clone(memory_format=fmt) if out._is_view() else out
