"""Errors that notebooks show as one line instead of a traceback."""

from __future__ import annotations


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
    """A checkpoint that is missing, unreadable, not from ``involution.train``, or of the wrong model."""


class WandbUnavailableError(AnalysisError):
    """A W&B project that cannot be read: offline, no API key, unknown project, or a timeout."""


class BenchmarksUnavailableError(AnalysisError):
    """No operator benchmark table to read (and no fresh run asked for)."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, prefixed by its type when that helps."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
