"""Side effects in code that ``torch.compile`` traces.

The public ops resolve their backend in Python, and Dynamo traces that Python when a caller
compiles it (``fullgraph=True`` included). A few steps there must really happen rather than be
traced (a traced logging call or import is a graph break): a one-time note, a device probe, the
registration of Inductor decompositions. ``run_while_tracing`` marks such a function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def run_while_tracing(fn: F) -> F:
    """Have Dynamo call ``fn`` for real while it traces (instead of tracing its body) and use
    its result as a constant: what ``torch.compiler.assume_constant_result(fn)`` does, without
    importing Dynamo with the package. ``fn`` must take constant arguments (strings, ints,
    devices) and return a constant; tests/test_ops_torch.py compiles each use with
    fullgraph=True."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn
