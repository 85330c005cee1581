"""Argument rules written once: each constructor that takes configured arguments keeps a table of
``key -> (test, what is allowed)`` and checks its arguments against it; the run's pre-flight check
(``involution.runner.preflight``) reads the same table before anything is built or written. So a
rule has one home, and the message is the same wherever it is found:
``data.batch_size must be an int >= 1, got 0``.

(The operator keys' table is ``involution.layers.checks``' own, beside the layers it protects.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

Rule = tuple[Callable[[Any], bool], str]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(low: int) -> Rule:
    return (lambda value: is_int(value) and value >= low, f"an int >= {low}")


def number_at_least(low: float) -> Rule:
    return (lambda value: is_number(value) and value >= low, f"a number >= {low:g}")


POSITIVE_NUMBER: Rule = (lambda value: is_number(value) and value > 0, "a positive number")
FRACTION: Rule = (lambda value: is_number(value) and 0 <= value < 1, "a number in [0, 1)")


def check(values: Mapping[str, Any], rules: Mapping[str, Rule], prefix: str) -> None:
    """Raise ``ValueError("<prefix>.<key> must be <allowed>, got <value>")`` for the first key of
    ``rules`` (in the table's order) whose value in ``values`` breaks its rule; keys absent from
    ``values`` are not checked (an empty ``prefix``: the key alone)."""
    for key, (ok, allowed) in rules.items():
        if key in values and not ok(values[key]):
            name = f"{prefix}.{key}" if prefix else key
            raise ValueError(f"{name} must be {allowed}, got {values[key]!r}")
