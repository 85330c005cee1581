"""What every task shares: a non-finite loss stops the run at once (``Diverged``), before
anything of that step reaches the weights or a checkpoint; the runner records it as
``diverged``."""

from __future__ import annotations

import torch


class Diverged(FloatingPointError):
    """The loss or the weights became NaN or infinite; ``step`` is the optimizer step."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def stop_if_diverged(loss: torch.Tensor, split: str, step: int) -> None:
    """Raise :class:`Diverged` when ``loss`` (of ``split``, at optimizer step ``step``) is NaN or
    infinite."""
    if not torch.isfinite(loss):
        raise Diverged(f"{split} loss is {loss.item()} at step {step}", step)
