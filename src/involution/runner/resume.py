"""Resuming runs: atomic checkpoint files, the checkpoint a run continues from, ``resume=...``.

``resume`` (conf/train.yaml):

- ``auto`` (default): a run whose directory already holds a checkpoint (a SLURM requeue, or the
  same ``hydra.run.dir`` passed again) continues from the newest one;
- ``never``: always start from scratch (refused when the directory already holds checkpoints,
  so that nothing of an earlier run is overwritten);
- ``<run dir>``: continue that run in place, with the overrides it was started with
  (``<run dir>/.hydra/overrides.yaml``) plus any given now;
- ``latest``: the newest unfinished run under ``outputs/<task_name>/`` (``make resume``).

The last two are command-line forms: :func:`resume_argv` turns them into ``hydra.run.dir=<dir>``
plus the run's own overrides before Hydra composes the config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from omegaconf import DictConfig, OmegaConf

from involution.models.checkpoint import (
    CheckpointFileError,
    CheckpointMismatchError,
    read_checkpoint,
)
from involution.runner.guards import WANDB_ID_KEY
from involution.runs.records import RECORD, process_alive, read_record

CHECKPOINTS = "checkpoints"
RESUME_MODES = ("auto", "never")
# job.json statuses of runs worth continuing (diverged runs would diverge again)
UNFINISHED = ("running", "preempted", "failed")


class ResumeError(ValueError):
    """``resume=`` names something that cannot be continued; the message is one line."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file next to the target, fsync, then ``os.replace``.

    A kill at any moment leaves either the previous checkpoint or the new one, never half a file.
    (Lightning's own writer goes through an fsspec transaction whose temporary file lives in the
    system temp directory; where that is another file system the final move is a copy into the
    target, which a kill can cut short.)
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options!r}"
            )
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        try:  # make the rename itself durable
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError:
            pass


class LoaderStateOnResume(Callback):
    """Hands the training loader its checkpointed position
    (``involution.data.base.ResumableLoader``).

    Lightning restores loader states only while building the loader after the loops are restored;
    a module that asks ``trainer.estimated_stepping_batches`` in ``configure_optimizers`` (ours:
    the schedule length) has the loader built earlier, and the states would be dropped. They are
    applied here, after the restore and before the first batch is drawn.
    """

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        fit = checkpoint.get("loops", {}).get("fit_loop", {})
        self.states = list(fit.get("state_dict", {}).get("combined_loader", []))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        states, self.states = self.states, []
        loaders = trainer.train_dataloader
        if not states or loaders is None:
            return
        flat = (
            CombinedLoader(loaders).flattened
            if not isinstance(loaders, CombinedLoader)
            else loaders.flattened
        )
        stateful = [loader for loader in flat if isinstance(loader, _Stateful)]
        for loader, state in zip(stateful, states):
            loader.load_state_dict(state)


class EpochCountedOnResume(Callback):
    """Counts the epoch a resumed run trains in as started, where Lightning does not.

    A checkpoint written on the last batch of an epoch (SIGTERM there, or a step checkpoint
    before the epoch-end one replaces it) restarts "mid epoch" at its last batch: Lightning
    (2.6) closes that epoch on restore and goes on with the next one, but skips the next one's
    ``ready``/``started`` counts (and its ``on_train_epoch_start`` hooks) while the restart
    stage is still set. The run trains the right batches; the checkpoints it writes during
    that epoch carry counters one short, and a run resumed from one of them trained a
    different sequence (tests/test_resume.py: SIGTERM at step 7 of 8, SIGKILL at 19). In a
    consistent state an epoch in progress has started one more epoch than it processed."""

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        progress = trainer.fit_loop.epoch_progress
        if progress.total.started == progress.total.processed:
            progress.increment_ready()
            progress.increment_started()


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every checkpoint of a run directory: ``checkpoints/*.ckpt`` and Lightning's SLURM
    ``hpc_ckpt_*``."""
    root = Path(run_dir)
    return sorted([*(root / CHECKPOINTS).glob("*.ckpt"), *root.glob("hpc_ckpt_*.ckpt")])


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a run continues from: the newest ``last*.ckpt`` or ``hpc_ckpt_*.ckpt``."""
    candidates = [p for p in run_checkpoints(run_dir) if p.name.startswith(("last", "hpc_ckpt_"))]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def trainer_plugins() -> list[Any]:
    """Atomic checkpoint files; on SLURM, Lightning's SLURM environment with auto-requeue (SIGUSR1:
    checkpoint + ``scontrol requeue``; the requeued job continues through resume=auto)."""
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=True))
    return plugins


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run continues from; when it is the run's own, also the W&B run to
    continue and the step up to which the CSV history is kept."""

    path: str
    wandb_id: str | None = None
    step: int | None = None


def resume_point(cfg: DictConfig, own_state: Mapping[str, torch.Tensor]) -> ResumePoint | None:
    """``ckpt_path``, else (``resume=auto``) the newest checkpoint already in the run directory,
    else None (a fresh start). The checkpoint must fit ``own_state`` (the module's state dict):
    ResumeError (one line) otherwise."""
    if cfg.get("ckpt_path"):
        path = str(cfg.ckpt_path)
    elif str(cfg.get("resume", "auto")) == "auto" and latest_checkpoint(cfg.paths.output_dir):
        path = str(latest_checkpoint(cfg.paths.output_dir))
    else:
        return None  # a fresh start
    try:
        state = read_checkpoint(path, mmap=True)
    except (CheckpointFileError, FileNotFoundError) as error:
        raise ResumeError(f"resuming: {error}") from error
    weights = state.get("state_dict", {})
    missing = [k for k in own_state if k not in weights]
    unexpected = [k for k in weights if k not in own_state]
    shapes = {
        k: (tuple(weights[k].shape), tuple(v.shape)) for k, v in own_state.items() if k in weights
    }
    mismatched = [(k, theirs, ours) for k, (theirs, ours) in shapes.items() if theirs != ours]
    if missing or unexpected or mismatched:
        error = CheckpointMismatchError(repr(path), missing, unexpected, mismatched)
        raise ResumeError(error.one_line())
    if not Path(path).resolve().is_relative_to(Path(cfg.paths.output_dir).resolve()):
        return ResumePoint(path)
    # this run's own checkpoint: the same W&B run and metrics files continue
    return ResumePoint(path, state.get(WANDB_ID_KEY), int(state.get("global_step", 0)))


def unfinished_runs(base: str | Path) -> list[Path]:
    """Run directories under ``base`` whose job.json is not ok (nor diverged) and that hold a
    checkpoint, newest first; a run whose recorded process is still alive on this host is
    skipped."""
    found = []
    for record_path in Path(base).glob("**/" + RECORD):
        run_dir = record_path.parent
        record = read_record(run_dir) or {}
        status = record.get("status")
        if status not in UNFINISHED or latest_checkpoint(run_dir) is None:
            continue
        if status == "running" and process_alive(record):
            continue
        found.append(run_dir)
    return sorted(found, key=lambda d: (d / RECORD).stat().st_mtime_ns, reverse=True)


def _value(args: Sequence[str], key: str) -> str | None:
    for arg in args:
        name, sep, value = arg.partition("=")
        if sep and name == key:
            return value
    return None


def resume_argv(args: Sequence[str]) -> list[str]:
    """Command-line arguments with ``resume=<run dir>`` / ``resume=latest`` expanded: the run's own
    overrides, then ``hydra.run.dir=<run dir>``, then the other arguments given now."""
    value = _value(args, "resume")
    if value is None or value in RESUME_MODES:
        return list(args)
    if value == "latest":
        task = _value(args, "task_name") or "train"
        runs = unfinished_runs(Path("outputs") / task)
        if not runs:
            raise ResumeError(
                f"resume=latest: no unfinished run with a checkpoint under outputs/{task}/"
            )
        run_dir = runs[0]
    else:
        run_dir = Path(value)
        if not run_dir.is_dir():
            raise ResumeError(f"resume={value}: no such run directory")
        if latest_checkpoint(run_dir) is None:
            raise ResumeError(
                f"resume={value}: the directory holds no checkpoint (checkpoints/last.ckpt) "
                "to continue from"
            )
    saved_path = run_dir / ".hydra" / "overrides.yaml"
    saved = [str(o) for o in OmegaConf.load(saved_path)] if saved_path.is_file() else []
    dropped = ("resume", "hydra.run.dir", "ckpt_path")
    keep = [o for o in saved if o.partition("=")[0].lstrip("+~") not in dropped]
    now = [a for a in args if a.partition("=")[0] not in ("resume",)]
    return [*keep, f"hydra.run.dir={run_dir}", "resume=auto", *now]
