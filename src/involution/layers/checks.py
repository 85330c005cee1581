"""The operator hyperparameters' rules: one table of per-key types and ranges, and the checks
that depend on the channels a layer has.

``check_operator_spec`` holds an operator description (the Hydra ``operator`` group as a plain
dict) to ``OPERATOR_RULES``, the rules that need no channel count, with the wording of the
run's pre-flight check (``operator.kernel_size must be an odd positive int, got 4``);
``check_operator_fit`` adds what depends on the channels (a group width or a head count that
divides them). The layer constructors and ``make_spatial_op`` call these two, so a bad value
stops construction with the same one-line message wherever it comes from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from involution.ops import BACKENDS


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


OPERATOR_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kernel_size": (lambda v: _positive_int(v) and v % 2 == 1, "an odd positive int"),
    "group_channels": (
        lambda v: v is None or _positive_int(v),
        "a positive int or null (one group)",
    ),
    "reduction_ratio": (_positive_int, "an int >= 1"),
    "dilation": (_positive_int, "an int >= 1"),
    "heads": (_positive_int, "an int >= 1"),
    "groups": (_positive_int, "an int >= 1"),
    "backend": (lambda v: isinstance(v, str) and v in BACKENDS, f"one of {BACKENDS}"),
    "recompute_kernel": (lambda v: isinstance(v, bool), "true or false"),
}


def check_operator_spec(spec: Mapping[str, Any]) -> None:
    """Raise a one-line ValueError for the first key of ``spec`` whose value breaks its rule in
    ``OPERATOR_RULES`` (keys without a rule, such as ``name``, are left to the caller)."""
    for key, value in spec.items():
        rule = OPERATOR_RULES.get(key)
        if rule is not None and not rule[0](value):
            raise ValueError(f"operator.{key} must be {rule[1]}, got {value!r}")


def check_operator_fit(
    channels: int,
    kernel_size: int,
    group_channels: int | None = None,
    reduction_ratio: int | None = None,
) -> None:
    """``check_operator_spec`` of these hyperparameters, then a one-line ValueError naming the
    key when one does not fit ``channels``."""
    spec: dict[str, Any] = {"kernel_size": kernel_size, "group_channels": group_channels}
    if reduction_ratio is not None:
        spec["reduction_ratio"] = reduction_ratio
    check_operator_spec(spec)
    if group_channels is not None and channels % group_channels:
        raise ValueError(
            f"group_channels={group_channels!r} must divide the {channels} channels "
            f"(allowed: a divisor of {channels}, or null for one group)"
        )
    if reduction_ratio is not None and reduction_ratio > channels:
        raise ValueError(
            f"reduction_ratio={reduction_ratio!r} must be an int in [1, {channels}] "
            f"for {channels} channels"
        )


def check_divides(key: str, value: int, channels: int) -> None:
    """``value`` (heads, groups) must divide ``channels``: a one-line ValueError naming ``key``."""
    if channels % value:
        raise ValueError(
            f"{key}={value!r} must divide the {channels} channels "
            f"(allowed: a positive divisor of {channels})"
        )
