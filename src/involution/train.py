"""``python -m involution.train [overrides]`` (``make train``): fit, then test the best checkpoint.

The run goes compose -> build -> fit and test -> record on the one run path
(``involution.runner``): bad input is one line before anything is written, a run continues from
its own newest checkpoint (``resume=auto``), SIGTERM/SIGUSR1 checkpoint and stop it
(``preempted``), a NaN/Inf loss stops it (``diverged``), and every outcome lands in
``<run dir>/job.json``. Any task trains here: ``task=<name>`` picks its LightningModule.
"""

from __future__ import annotations

import time

import hydra
import torch
from omegaconf import DictConfig

from involution.runner.build import Run
from involution.runner.lifecycle import execute, run_job
from involution.runner.loggers import update_summaries
from involution.runner.preflight import run_cli


def fit_and_test(run: Run) -> dict[str, float]:
    """Fit (from ``run.resume`` when set), test the best checkpoint; every final metric, the
    checkpoint callback's best as ``best/<monitor>``."""
    trainer, started = run.trainer, time.perf_counter()
    resume_from = run.resume.path if run.resume else None
    trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=resume_from, weights_only=True)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"best/{checkpoint.monitor}"] = float(checkpoint.best_model_score)
    if run.cfg.test:
        # the best checkpoint's path, not "best": with two ModelCheckpoint callbacks (the epoch
        # and the step checkpoints) Lightning would warn which one "best" means
        best = checkpoint.best_model_path if checkpoint is not None else None
        verbose = bool(run.cfg.get("verbose", False))  # the test table; the summary has its values
        tested = trainer.test(
            run.module, datamodule=run.datamodule, ckpt_path=best or None, verbose=verbose
        )
        for result in tested:
            metrics.update({key: float(value) for key, value in result.items()})
    metrics["wall_time_s"] = time.perf_counter() - started
    metrics.update(params=float(run.info["params"]), macs=float(run.info["macs"]))
    update_summaries(trainer.loggers, {k: v for k, v in metrics.items() if k.startswith("best/")})
    return metrics


def train(cfg: DictConfig) -> dict[str, float]:
    """Build, fit and test in this process (no job record; errors propagate)."""
    return execute(cfg, fit_and_test)


@hydra.main(version_base="1.3", config_path="pkg://involution.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra task: returns ``optimized_metric`` (Optuna maximises it); None for a failed job."""
    return run_job(cfg, fit_and_test).value


def cli() -> None:
    """The command (``involution-train``): overrides checked and ``resume=`` expanded first."""
    torch.set_float32_matmul_precision("high")
    run_cli(main, "train")


if __name__ == "__main__":
    cli()
