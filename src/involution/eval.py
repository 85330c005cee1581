"""``python -m involution.eval ckpt_path=<file> [overrides]`` (``make eval CKPT=<file>``):
evaluate a checkpoint on the test (or val) split of a data group.

The checkpoint is a Lightning checkpoint of this project, which carries its architecture, or a
plain / official mmcls state dict, whose architecture comes from the ``model`` and ``operator``
groups. The same run path as training (``involution.runner``): bad input is one line (exit
status 2) before evaluating. The result (top-1, top-5, loss, the split and what was evaluated) is
printed as JSON, written to ``<run dir>/metrics.json`` and logged by the logger group.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from involution.runner.build import Run
from involution.runner.lifecycle import execute, run_job
from involution.runner.loggers import update_summaries
from involution.runner.preflight import run_cli

log = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"


def evaluate_split(run: Run) -> dict[str, Any]:
    """Test (or validate) the loaded weights; the split's metrics without the split's prefix
    (``top1``, ``top5``, ``loss``) and what was evaluated, also written to metrics.json and the
    W&B summary (``eval/...``)."""
    split = run.cfg.split
    loop = run.trainer.test if split == "test" else run.trainer.validate
    results = loop(run.module, datamodule=run.datamodule)
    metrics = {key: float(value) for key, value in (results[0] if results else {}).items()}
    named = {key.partition("/")[2].removeprefix("acc_") or key: v for key, v in metrics.items()}
    result = {**named, **run.info, "split": split}
    if run.trainer.is_global_zero:
        path = Path(run.cfg.paths.output_dir) / METRICS_JSON
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        headline = {f"eval/{k}": v for k, v in result.items() if isinstance(v, int | float)}
        update_summaries(run.trainer.loggers, headline)
    return result


def options(cfg: DictConfig) -> dict[str, Any]:
    """The builder's options: evaluate ``ckpt_path``; the reported loss uses ``label_smoothing``
    (plain cross-entropy by default), not the training recipe's."""
    return {"evaluate": True, "module_overrides": {"label_smoothing": cfg.label_smoothing}}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Build and evaluate in this process (no job record; errors propagate)."""
    return execute(cfg, evaluate_split, **options(cfg))


@hydra.main(version_base="1.3", config_path="pkg://involution.conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    """Hydra task: prints the result as JSON; returns top-1."""
    outcome = run_job(cfg, evaluate_split, **options(cfg))
    if outcome.status != "ok":
        return None
    print(json.dumps(outcome.metrics, indent=2), flush=True)
    path = Path(cfg.paths.output_dir) / METRICS_JSON
    log.info("%s top-1 = %s -> %s", cfg.split, outcome.metrics.get("top1"), path)
    return outcome.metrics.get("top1")


def cli() -> None:
    """The command (``involution-eval``): overrides checked first."""
    torch.set_float32_matmul_precision("high")
    run_cli(main, "eval", resumable=False)


if __name__ == "__main__":
    cli()
