"""Hydra entry point: compose -> validate and instantiate -> fit -> test -> return the metric.

``python -m involution.train [overrides]`` (``make train ARGS="..."``). Everything that can be
wrong with a configuration is found while building the run, before the first training step, and
reported as one line naming the key.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from involution.data.base import ClassificationDataModule
from involution.lit import ImageClassifier
from involution.loggers import build_loggers, run_identity
from involution.models import count_macs

log = logging.getLogger(__name__)


class SetupError(ValueError):
    """A configuration problem found before training; its message is the one line users see."""


@dataclass
class Run:
    datamodule: ClassificationDataModule
    module: ImageClassifier
    trainer: L.Trainer
    summary: dict[str, Any]


def model_arguments(cfg: DictConfig, datamodule: ClassificationDataModule) -> dict[str, Any]:
    """``create_model`` keyword arguments: the model group + the operator group + the data's shape."""
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


def build_run(cfg: DictConfig) -> Run:
    """Instantiate data, model, callbacks, loggers and trainer; raise SetupError on a bad config."""
    try:
        datamodule: ClassificationDataModule = instantiate(cfg.data)
        module = ImageClassifier(model_arguments(cfg, datamodule), **cfg.module)
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise SetupError(str(error)) from error
    image = (1, datamodule.in_channels, datamodule.image_size, datamodule.image_size)
    params = sum(p.numel() for p in module.model.parameters())
    macs = count_macs(module.model, image)
    identity = run_identity(cfg.operator, cfg.task_name, experiment_name())
    loggers = build_loggers(cfg.logger, identity, list(cfg.tags))
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    summary = {"params": params, "macs": macs, "input_size": list(image), **identity}
    for logger in loggers:
        logger.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), **summary})
    return Run(datamodule, module, trainer, summary)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (resuming from ``ckpt_path`` if set), test the best checkpoint, return all final metrics."""
    L.seed_everything(cfg.seed, workers=True)
    run = build_run(cfg)
    log.info("model: %.2f M params, %.3f G multiply-adds per image", run.summary["params"] / 1e6, run.summary["macs"] / 1e9)
    started = time.perf_counter()
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=cfg.ckpt_path)
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
    for logger in run.trainer.loggers:
        logger.finalize("success")
    if run.trainer.is_global_zero:
        import wandb

        wandb.finish()
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://involution.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra task: returns ``cfg.optimized_metric`` (Optuna maximises it)."""
    try:
        metrics = train(cfg)
    except SetupError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    best_key = f"best/{cfg.optimized_metric}"
    value = metrics.get(best_key, metrics.get(cfg.optimized_metric))
    log.info("%s = %s", cfg.optimized_metric, value)
    return value


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
