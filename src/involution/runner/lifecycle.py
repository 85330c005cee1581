"""A run's lifecycle, from its first line to its outcome: the one wrapper every entry point runs in.

:func:`execute` is the straight path: prepare (seed, denormals, the config tree) -> build
(:mod:`involution.runner.build`) -> the run header -> the entry point's work (fit and test, or
evaluate) -> its metrics; errors propagate. :func:`run_job` runs it inside the outcome mapping,
whose table is written once, for every entry point and task, in :mod:`involution.runner.outcome`.
The run header (:func:`involution.runner.console.header`) and the closing summary
(:func:`involution.runner.console.closing`) are called from here and nowhere else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, read_write

from involution.runner import console
from involution.runner.build import Run, build, choice, identity
from involution.runner.loggers import wandb_status
from involution.runner.outcome import Outcome, outcome_of
from involution.runs.records import JobRecorder, check_finite

Work = Callable[[Run], Mapping[str, Any]]


def prepare(cfg: DictConfig) -> None:
    """Seed everything, flush denormals (before any thread pool exists: the threads torch and
    numba start inherit it) and route warnings and Lightning's notices to the run's log."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if "flush_denormal" in cfg:
        torch.set_flush_denormal(bool(cfg.flush_denormal))
    # A debug mode (debug=fdr|overfit|limit|profiler) is asked for to see what Lightning does:
    # its notices (which loop runs how many batches, shuffling turned off) go on the console.
    console.route_logs(bool(cfg.get("verbose", False)) or choice("debug") is not None)


def start(cfg: DictConfig, **build_options: Any) -> Run:
    """Build the run and show its header (the config tree is written then: bad input found while
    building is the first thing a run prints)."""
    run = build(cfg, **build_options)
    console.header(run)
    return run


def execute(cfg: DictConfig, work: Work, **build_options: Any) -> dict[str, Any]:
    """prepare -> build -> header -> ``work(run)``; returns its metrics, raises what goes wrong."""
    prepare(cfg)
    return dict(work(start(cfg, **build_options)))


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


def finish_wandb(outcome: Outcome) -> None:
    """Finish the W&B run this process has open (a preempted one is marked so in W&B; resuming
    continues it), so that the next job of a sweep starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    if outcome.status == "preempted":
        wandb.run.mark_preempting()
    wandb.finish(exit_code=0 if outcome.status == "ok" else 1)


def run_job(cfg: DictConfig, work: Work, **build_options: Any) -> Outcome:
    """:func:`execute` as a Hydra job whose every outcome is recorded (the table of
    :mod:`involution.runner.outcome`).

    Returns the outcome of a run that finished, or of a multirun job that did not (the sweep goes
    on); a single run that did not finish ends the process (or re-raises an unexpected error).
    """
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    job = OmegaConf.select(hydra_cfg, "job.num", default=None)
    recorder = JobRecorder(
        cfg.paths.output_dir, job, hydra_cfg.overrides.task, identity(cfg), rank_zero_only.rank,
        optimized_metric=cfg.get("optimized_metric"),
    )  # fmt: skip
    run = None
    try:
        with ddp_children_run_this_job() if multirun else nullcontext():
            prepare(cfg)
            run = start(cfg, **build_options)
            metrics = dict(work(run))
        check_finite({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    except BaseException as error:  # every ending is recorded, then acted on (runner.outcome)
        outcome = outcome_of(error, cfg)
    else:
        key = cfg.get("optimized_metric")
        outcome = Outcome("ok", metrics, metrics.get(f"best/{key}", metrics.get(key)))
    if outcome.status == "ok":
        recorder.ok(outcome.metrics)
    elif outcome.status in ("diverged", "preempted"):
        recorder.stopped(outcome.status, outcome.recorded, outcome.checkpoint)
    else:
        recorder.failed(outcome.recorded)
    wandb = wandb_status()  # its URL or directory, read before the run is finished
    finish_wandb(outcome)
    elapsed = recorder.record.get("wall_time_s")
    console.closing(cfg, outcome, run, job if multirun else None, wandb, elapsed)
    if outcome.status == "ok" or (multirun and outcome.sweep_goes_on):
        if outcome.exit_code == 1 and torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next job of the sweep starts with the memory free
        return outcome
    if outcome.exit_code == 1:
        raise outcome.recorded  # an unexpected error or an interruption: re-raised as it came
    raise SystemExit(outcome.exit_code)
