"""``make_spatial_op``: the bottleneck's spatial operator from an operator description."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from involution.layers.attention import LocalSelfAttention2d
from involution.layers.checks import check_divides, check_operator_fit, check_operator_spec
from involution.layers.involution import Involution2d

OPERATOR_KEYS: dict[str, set[str]] = {
    "involution": {
        "kernel_size",
        "group_channels",
        "reduction_ratio",
        "dilation",
        "backend",
        "recompute_kernel",
    },
    "convolution": {"kernel_size", "groups", "dilation"},
    "attention": {"kernel_size", "heads", "dilation", "backend"},
}


def make_spatial_op(operator: Mapping[str, Any], channels: int, stride: int = 1) -> nn.Module:
    """Build the bottleneck's spatial operator from ``{"name": ..., **hyperparameters}``.

    Hyperparameter errors are raised here, at construction, i.e. before any training starts.
    """
    spec = dict(operator)
    name = spec.pop("name", None)
    if name not in OPERATOR_KEYS:
        raise ValueError(f"operator.name must be one of {sorted(OPERATOR_KEYS)}, got {name!r}")
    unknown = set(spec) - OPERATOR_KEYS[name]
    if unknown:
        raise ValueError(
            f"operator {name!r} got unknown keys {sorted(unknown)}; "
            f"allowed: {sorted(OPERATOR_KEYS[name])}"
        )
    check_operator_spec(spec)
    if name == "involution":
        return Involution2d(channels, stride=stride, **spec)
    if name == "attention":
        return LocalSelfAttention2d(channels, stride=stride, **spec)
    kernel_size = spec.get("kernel_size", 3)
    dilation = spec.get("dilation", 1)
    groups = spec.get("groups", 1)
    check_operator_fit(channels, kernel_size)
    check_divides("groups", groups, channels)
    return nn.Conv2d(
        channels,
        channels,
        kernel_size,
        stride=stride,
        padding=dilation * (kernel_size - 1) // 2,
        dilation=dilation,
        groups=groups,
        bias=False,
    )
