"""Run guards (a Lightning callback): preemption signals and divergence.

- SIGTERM (Lightning notes it in ``trainer.received_sigterm``) and SIGUSR1 (handled here unless
  Lightning's SLURM environment owns it for its auto-requeue) stop the run at the end of the
  current batch with a checkpoint of that step (``checkpoints/last.ckpt``, the file ``resume=auto``
  continues from), then :class:`Preempted` is raised; the run's lifecycle
  (``involution.runner.lifecycle``) records ``preempted`` in job.json and exits with 128 + the
  signal number.
- A checkpoint is never written from non-finite weights (``involution.tasks.Diverged`` instead),
  so the last checkpoint of a diverged run is its last good state.
- Every checkpoint carries the W&B run id, so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from involution.tasks import Diverged

log = logging.getLogger(__name__)

WANDB_ID_KEY = "wandb_run_id"


class Preempted(Exception):
    """The run was asked to stop (``signum``) and saved ``checkpoint`` at ``step`` first."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint"
        super().__init__(f"{name} at step {step}: saved {where}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """``<dirpath of the first ModelCheckpoint>/last.ckpt`` (else
    ``<default_root_dir>/checkpoints``)."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return (
                Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
            )
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class RunGuard(Callback):
    """Checkpoint-and-stop on SIGTERM/SIGUSR1; refuse to checkpoint non-finite weights."""

    def __init__(self, signals: bool = True) -> None:
        self.signals = signals
        self.received: int | None = None
        self.saved_step: int | None = None
        self._stop: Preempted | None = None
        self._previous_usr1: Any = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = signum  # acted upon at the end of the batch, when the state is consistent

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning's own signal handlers are in place (they are set up after `setup`)
        if not self.signals or not hasattr(signal, "SIGUSR1"):
            return
        current = signal.getsignal(signal.SIGUSR1)
        if current in (None, signal.SIG_DFL):  # not owned by Lightning's SLURM auto-requeue
            self._previous_usr1 = current
            signal.signal(signal.SIGUSR1, self._on_signal)

    def _restore_handler(self) -> None:
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handler()

    def _pending(self, trainer: L.Trainer) -> int | None:
        if self.received is not None:
            return self.received
        return int(signal.SIGTERM) if trainer.received_sigterm else None

    def _save(self, trainer: L.Trainer) -> str:
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full state: resuming needs it
        self.saved_step = trainer.global_step
        return str(path)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        signum = self._pending(trainer)
        if signum is None or self._stop is not None:
            return
        path = self._save(trainer)
        log.warning(
            "%s: checkpoint of step %d saved to %s; stopping",
            signal.Signals(signum).name,
            trainer.global_step,
            path,
        )
        # Raised at the next hook: Lightning logs this batch's metrics after on_train_batch_end, and
        # they belong to the steps before the checkpoint (a resumed run does not log them again).
        self._stop = Preempted(signum, trainer.global_step, path)

    def _stop_now(self, trainer: L.Trainer) -> None:
        if self._stop is not None:
            _flush(trainer)
            raise self._stop

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        self._stop_now(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # validation after the checkpoint runs again on resume
            self._stop_now(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_now(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handler()  # Lightning calls no teardown hook after an exception
        if isinstance(exception, SIGTERMException | Preempted):
            # SIGTERM noticed by Lightning outside a training batch (validation, epoch end)
            if (
                self.saved_step != trainer.global_step
                and trainer.state.fn == "fit"
                and not trainer.sanity_checking
            ):
                self._save(trainer)
            _flush(trainer)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for name, parameter in pl_module.named_parameters():
            if not torch.isfinite(parameter).all():
                raise Diverged(
                    f"parameter {name} is not finite at step {trainer.global_step}; "
                    "checkpoint not written",
                    trainer.global_step,
                )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint[WANDB_ID_KEY] = str(logger.version)
        # the metrics files on disk cover every step before the checkpoint, whatever kills the run
        _flush(trainer)


def _flush(trainer: L.Trainer) -> None:
    for logger in trainer.loggers:
        logger.save()
