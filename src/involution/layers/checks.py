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

from collections.abc import Mapping
from typing import Any

from involution import rules
from involution.ops import BACKENDS

# The operator keys' rules that hold whatever the channels: one table, read by the constructors
# (through check_operator_fit) and by the run's pre-flight check (check_operator_spec, before
# anything is built), so both say the same line.
OPERATOR_RULES: dict[str, rules.Rule] = {
    "kernel_size": (
        lambda v: rules.is_int(v) and v >= 1 and v % 2 == 1,
        "an odd positive int",
    ),
    "group_channels": (
        lambda v: v is None or (rules.is_int(v) and v >= 1),
        "a positive int or null (one group)",
    ),
    "reduction_ratio": rules.int_at_least(1),
    "dilation": rules.int_at_least(1),
    "heads": rules.int_at_least(1),
    "groups": rules.int_at_least(1),
    "backend": (lambda v: isinstance(v, str) and v in BACKENDS, f"one of {BACKENDS}"),
    "recompute_kernel": (lambda v: isinstance(v, bool), "true or false"),
}


def check_operator_spec(spec: Mapping[str, Any]) -> None:
    """Raise ``ValueError("operator.<key> must be <allowed>, got <value>")`` for the first key of
    ``OPERATOR_RULES`` (in the table's order) whose value in ``spec`` (the ``operator`` group as
    a dict) breaks its rule; keys without a rule, such as ``name``, are left to the caller."""
    rules.check(spec, OPERATOR_RULES, "operator")


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
