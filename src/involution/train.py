"""Hydra entry point: compose -> validate and instantiate -> fit -> test -> return the metric.

``python -m involution.train [overrides]`` (``make train ARGS="..."``). Everything that can be
wrong with a configuration is found before the first training step (most of it before the run
directory is touched, see involution.validation) and reported as one line naming the key.
A run continues from its own newest checkpoint when its directory holds one (``resume=auto``,
see involution.resume); SIGTERM/SIGUSR1 checkpoint the current step and stop it (``preempted``),
a NaN/Inf loss stops it at once (``diverged``, see involution.guards).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, read_write

from involution import console, resume, validation
from involution.data.base import ClassificationDataModule
from involution.guards import WANDB_ID_KEY, Diverged, Preempted, RunGuard
from involution.lit import ImageClassifier
from involution.loggers import build_loggers, update_summaries
from involution.models import CheckpointMismatchError, count_macs
from involution.models.checkpoint import CheckpointFileError, read_checkpoint
from involution.runs.identity import run_identity, sweep_context
from involution.runs.records import JobRecorder, NonFiniteMetrics, check_finite
from involution.validation import SetupError

log = logging.getLogger(__name__)


@dataclass
class Run:
    datamodule: ClassificationDataModule
    module: ImageClassifier
    trainer: L.Trainer
    summary: dict[str, Any]


def model_arguments(cfg: DictConfig, datamodule: ClassificationDataModule) -> dict[str, Any]:
    """``create_model`` keyword arguments: the model group + the operator group + the data's
    shape."""
    arguments = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(arguments, dict)
    if arguments.get("checkpoint") is None:
        arguments.pop("checkpoint", None)
    arguments["operator"] = OmegaConf.to_container(cfg.operator, resolve=True)
    arguments["num_classes"] = datamodule.num_classes
    arguments["in_channels"] = datamodule.in_channels
    return arguments


def experiment_name() -> str | None:
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("experiment")


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The run's W&B name, group and tags (in a multirun: the sweep's group, named from the
    overrides)."""
    return run_identity(cfg.operator, cfg.task_name, experiment_name(), sweep_context(cfg))


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint this run continues from: ``ckpt_path``, else (``resume=auto``) the newest
    checkpoint already in the run directory, else None (a fresh start)."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    if str(cfg.get("resume", "auto")) != "auto":
        return None
    found = resume.latest_checkpoint(cfg.paths.output_dir)
    return str(found) if found is not None else None


def trainer_plugins() -> list[Any]:
    """Atomic checkpoint files; on SLURM, Lightning's SLURM environment with auto-requeue (SIGUSR1:
    checkpoint + ``scontrol requeue``; the requeued job continues through resume=auto)."""
    plugins: list[Any] = [resume.AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=True))
    return plugins


def build_run(cfg: DictConfig, ckpt_path: str | None = None) -> Run:
    """Instantiate data, model, callbacks, loggers and trainer; raise SetupError on a bad config.

    ``ckpt_path``: the checkpoint the run will resume from; it must fit the model, and when it is
    the run's own it gives the W&B run to continue and the step up to which the CSV history is kept.
    """
    validation.check_config(cfg)
    try:
        try:
            datamodule: ClassificationDataModule = instantiate(cfg.data)
        except InstantiationException as error:  # the data module's own message is the useful one
            raise error.__cause__ or error from None
        if not getattr(datamodule, "download", False):  # files are there: check them now
            datamodule.setup("fit")
        module = ImageClassifier(model_arguments(cfg, datamodule), **cfg.module)
    except CheckpointMismatchError as error:
        raise SetupError(f"model.checkpoint: {error.one_line()}") from error
    except (ValueError, TypeError, FileNotFoundError, CheckpointFileError) as error:
        raise SetupError(str(error).strip().splitlines()[0]) from error
    wandb_id = resume_step = None
    if ckpt_path is not None:
        try:
            state = read_checkpoint(ckpt_path, mmap=True)
        except (CheckpointFileError, FileNotFoundError) as error:
            raise SetupError(f"resuming: {error}") from error
        validation.check_fits(state.get("state_dict", {}), module.state_dict(), repr(ckpt_path))
        if Path(ckpt_path).resolve().is_relative_to(Path(cfg.paths.output_dir).resolve()):
            # this run's own checkpoint: the same W&B run and metrics files continue
            wandb_id, resume_step = state.get(WANDB_ID_KEY), int(state.get("global_step", 0))
    image = (1, datamodule.in_channels, datamodule.image_size, datamodule.image_size)
    params = sum(p.numel() for p in module.model.parameters())
    macs = count_macs(module.model, image)
    run_id = identity(cfg)
    # the logger group's entries, each told the run's identity and what a resume continues
    loggers = build_loggers(
        cfg.logger, run_id, list(cfg.tags), wandb_id=wandb_id, resume_step=resume_step
    )
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    callbacks += [RunGuard(), resume.LoaderStateOnResume()]
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, plugins=trainer_plugins()
    )
    summary = {"params": params, "macs": macs, "input_size": list(image), **run_id}
    for logger in loggers:
        logger.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), **summary})
    return Run(datamodule, module, trainer, summary)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (resuming from ``ckpt_path`` or the run's own newest checkpoint, see
    :func:`resume_checkpoint`), test the best checkpoint, return all final metrics."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # before any thread pool exists: the threads torch and numba start inherit the setting
    torch.set_flush_denormal(bool(cfg.get("flush_denormal", True)))
    if cfg.get("print_config", True):
        console.print_config_tree(cfg, save_dir=cfg.paths.output_dir)
    ckpt_path = resume_checkpoint(cfg)
    run = build_run(cfg, ckpt_path)
    log.info(
        "model: %.2f M params, %.3f G multiply-adds per image",
        run.summary["params"] / 1e6,
        run.summary["macs"] / 1e9,
    )
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)
    started = time.perf_counter()
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {key: float(value) for key, value in run.trainer.callback_metrics.items()}
    checkpoint = run.trainer.checkpoint_callback
    best = checkpoint.best_model_score if checkpoint is not None else None
    if best is not None:
        metrics[f"best/{checkpoint.monitor}"] = float(best)
    if cfg.test:
        ckpt = "best" if checkpoint is not None and checkpoint.best_model_path else None
        for result in run.trainer.test(run.module, datamodule=run.datamodule, ckpt_path=ckpt):
            metrics.update({key: float(value) for key, value in result.items()})
    metrics["wall_time_s"] = time.perf_counter() - started
    metrics.update(params=float(run.summary["params"]), macs=float(run.summary["macs"]))
    update_summaries(
        run.trainer.loggers, {k: v for k, v in metrics.items() if k.startswith("best/")}
    )
    for logger in run.trainer.loggers:
        logger.finalize("success")
    if run.trainer.is_global_zero:
        import wandb

        wandb.finish()
    return metrics


@contextmanager
def ddp_children_run_this_job() -> Iterator[None]:
    """Let Lightning's DDP launcher start this multirun job's other ranks, not the sweep again.

    Lightning starts ranks > 0 by re-running ``sys.argv`` plus ``hydra.run.dir=<HydraConfig
    run.dir>``; in a multirun job that command is the sweep. For the job's duration the command
    becomes this job's overrides as a single run, in the job's own directory. Works for jobs that
    run in the launching process (Hydra's basic launcher); on SLURM srun starts the ranks instead.
    """
    hydra_cfg = HydraConfig.get()
    argv, run_dir = sys.argv, hydra_cfg.run.dir
    sys.argv = [argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = run_dir


def close_wandb_after_failure(preempted: bool = False) -> None:
    """Finish a W&B run a failed job left open, so that the next job of the sweep starts its own
    (a preempted run is marked so in W&B; resuming continues it)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        if preempted:
            wandb.run.mark_preempting()
        wandb.finish(exit_code=1)


@hydra.main(version_base="1.3", config_path="pkg://involution.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra task: returns ``cfg.optimized_metric`` (Optuna maximises it).

    Every run records its outcome in ``<run dir>/job.json`` (involution.runs.records.JobRecorder).
    In a multirun a failing job (bad config, NaN, out of memory, any exception) is recorded, returns
    None and the sweep goes on; the sweep's summary lists it.
    """
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    recorder = JobRecorder(
        cfg.paths.output_dir,
        OmegaConf.select(hydra_cfg, "job.num", default=None),
        hydra_cfg.overrides.task,
        identity(cfg),
        rank_zero_only.rank,
    )
    metrics: dict[str, float] = {}
    try:
        with ddp_children_run_this_job() if multirun else nullcontext():
            metrics = train(cfg)
        check_finite(metrics)
    except SetupError as error:
        recorder.failed(error)
        if multirun:
            log.error("job %s failed: %s", hydra_cfg.job.num, error)
            return None
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except (
        Preempted,
        SIGTERMException,
    ) as error:  # the whole process is asked to stop: so does a sweep
        signum = getattr(error, "signum", signal.SIGTERM)
        checkpoint = getattr(error, "checkpoint", None) or resume.latest_checkpoint(
            cfg.paths.output_dir
        )
        recorder.stopped("preempted", error, checkpoint)
        close_wandb_after_failure(preempted=True)
        print(
            f"preempted: {signal.Signals(signum).name}; checkpoint {checkpoint}; "
            "run the same command again (resume=auto) to continue",
            file=sys.stderr,
        )
        raise SystemExit(128 + int(signum)) from None
    except (Diverged, NonFiniteMetrics) as error:
        checkpoint = resume.latest_checkpoint(cfg.paths.output_dir)
        kept = (
            f"last good checkpoint {checkpoint} (kept)"
            if checkpoint
            else "no checkpoint was written"
        )
        message = f"training diverged: {str(error).splitlines()[0]}; {kept}"
        recorder.stopped("diverged", Diverged(message, getattr(error, "step", -1)), checkpoint)
        close_wandb_after_failure()
        if multirun:
            log.error("job %s diverged: %s", hydra_cfg.job.num, message)
            return None
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(3) from None
    except Exception as error:
        message = recorder.failed(error, metrics)
        close_wandb_after_failure()
        if not multirun:
            raise
        log.exception("job %s failed: %s", hydra_cfg.job.num, message)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None
    except BaseException as error:  # interrupted: recorded, and the sweep stops
        recorder.failed(error)
        raise
    recorder.ok(metrics)
    best_key = f"best/{cfg.optimized_metric}"
    value = metrics.get(best_key, metrics.get(cfg.optimized_metric))
    log.info("%s = %s", cfg.optimized_metric, value)
    return value


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    validation.run_cli(main, "train")
