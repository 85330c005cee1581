"""Errors that notebooks show as one line instead of a traceback."""

from __future__ import annotations

# The one-line text of an exception is the run records' (involution.runs.records.one_line);
# ``first_line`` is the name costs.py and kernels.py import it by.
from involution.runs.records import one_line as first_line

__all__ = [
    "AnalysisError",
    "BenchmarksUnavailableError",
    "CheckpointError",
    "NotAMultirunError",
    "WandbUnavailableError",
    "first_line",
]


class AnalysisError(Exception):
    """Bad input to an analysis step (wrong directory, wrong checkpoint, unreachable W&B project).

    The message is a single line that says what was given, what is wrong and what to give instead.
    IPython (Jupyter) honours ``_render_traceback_``: a notebook cell that raises it shows that line
    alone, not a stack of frames.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class NotAMultirunError(AnalysisError):
    """A path that is neither a Hydra multirun directory nor a sweep summary file."""


class CheckpointError(AnalysisError):
    """A checkpoint that is missing, unreadable, not from ``involution.train``, or of the wrong
    model."""


class WandbUnavailableError(AnalysisError):
    """A W&B project that cannot be read: offline, no API key, unknown project, or a timeout."""


class BenchmarksUnavailableError(AnalysisError):
    """No operator benchmark table to read (and no fresh run asked for)."""
