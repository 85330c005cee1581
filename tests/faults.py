"""A Lightning callback that injects one fault into a training run, for the tests of resume,
preemption, divergence and faults inside a batch.

Selected with ``+callbacks.fault._target_=faults.Fault`` (``tests/`` on PYTHONPATH). ``kind``
(sigkill | sigterm | sigusr1 | error | oom | nan_weights | none) and ``step`` (the optimizer step
at which it strikes) come from the config (``+callbacks.fault.kind=error``, one per sweep job) or,
when not given there, from the environment variables ``INVOLUTION_FAULT`` and
``INVOLUTION_FAULT_STEP``, so that the very same command line runs again without the fault.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class Fault(Callback):
    def __init__(self, kind: str | None = None, step: int | None = None) -> None:
        self.kind = kind if kind is not None else os.environ.get("INVOLUTION_FAULT", "none")
        self.step = step if step is not None else int(os.environ.get("INVOLUTION_FAULT_STEP", "-1"))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if trainer.global_step != self.step:
            return
        if self.kind in ("sigkill", "sigterm", "sigusr1"):
            os.kill(os.getpid(), getattr(signal, self.kind.upper()))
        elif self.kind == "error":
            raise RuntimeError(f"injected fault at step {self.step}")
        elif self.kind == "oom":
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB (injected)"
            )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        # weights turned NaN by this step's update (its loss was finite): the checkpoint due at
        # this step must not be written
        if self.kind == "nan_weights" and trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
