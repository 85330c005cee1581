"""Hydra entry point: evaluate a checkpoint on the test (or val) split of a data group.

``python -m involution.eval ckpt_path=<file> [overrides]`` (``make eval CKPT=<file> ARGS="..."``).
The checkpoint is either a Lightning checkpoint of this project, which carries its architecture
in its hyperparameters, or a plain / official mmcls state dict (see
``involution.models.checkpoint``), whose architecture comes from the ``model`` and ``operator``
groups. The result (top-1, top-5, loss, the split and what was evaluated) is printed as JSON,
written to ``<run dir>/metrics.json`` and logged by the logger group (W&B run + CSV).

Every problem with the input (no such file, a file that is no checkpoint, weights of another
architecture, a data set with another number of classes or channels, an unknown split) is found
before evaluating and reported as one line naming it; the exit status is then 2.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from involution import console
from involution.data.base import ClassificationDataModule
from involution.lit import ImageClassifier
from involution.loggers import build_loggers, update_summaries
from involution.models import CheckpointMismatchError, count_macs, load_checkpoint
from involution.models.checkpoint import extract_state_dict
from involution.runs.identity import run_identity, split_override
from involution.train import SetupError, experiment_name, model_arguments

log = logging.getLogger(__name__)

SPLITS = ("test", "val")
METRICS_JSON = "metrics.json"


@dataclass
class Evaluation:
    datamodule: ClassificationDataModule
    module: ImageClassifier
    trainer: L.Trainer
    info: dict[str, Any]


def read_checkpoint(path: str | None) -> dict[str, Any]:
    """The checkpoint object (tensors and plain containers only: ``weights_only=True``)."""
    if not path:
        raise SetupError(
            "ckpt_path is not set: make eval CKPT=<file> "
            "(or python -m involution.eval ckpt_path=<file>)"
        )
    file = Path(path)
    if not file.is_file():
        raise SetupError(f"ckpt_path={path!r}: no such file")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated file, a pickle of other objects, not a torch file
        text = str(error).strip().splitlines()
        raise SetupError(
            f"ckpt_path={path!r} is not a loadable checkpoint: "
            f"{type(error).__name__}: {text[0] if text else ''}"
        ) from None
    if not isinstance(obj, dict):
        raise SetupError(
            f"ckpt_path={path!r} holds a {type(obj).__name__}, not a checkpoint (a dict of weights)"
        )
    return obj


def stored_model(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ``create_model`` arguments a Lightning checkpoint of this project carries, else None."""
    hyper = obj.get("hyper_parameters")
    if (
        "pytorch-lightning_version" in obj
        and isinstance(hyper, dict)
        and isinstance(hyper.get("model"), dict)
    ):
        return dict(hyper["model"])
    return None


def overridden_keys() -> set[str]:
    """Config keys and groups named on the command line."""
    if not HydraConfig.initialized():
        return set()
    return {split_override(o)[0] for o in HydraConfig.get().overrides.task}


def data_choice(cfg: DictConfig) -> str:
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("data")
        if choice:
            return str(choice)
    return str(OmegaConf.select(cfg, "data._target_", default="data")).rsplit(".", 1)[-1]


def check_fits_data(
    state: dict[str, torch.Tensor], path: str, data: str, datamodule: ClassificationDataModule
) -> None:
    """The head's classes and the first convolution's input channels must match the data set."""
    head = state.get("fc.weight")
    if head is not None and head.shape[0] != datamodule.num_classes:
        raise SetupError(
            f"data={data} has {datamodule.num_classes} classes but checkpoint {path!r} classifies "
            f"{head.shape[0]} (fc.weight {tuple(head.shape)}); "
            f"choose a data group with {head.shape[0]} classes"
        )
    convs = [v for k, v in state.items() if v.ndim == 4 and k.startswith("stem.")]
    if convs and convs[0].shape[1] != datamodule.in_channels:
        raise SetupError(
            f"data={data} has {datamodule.in_channels}-channel images but checkpoint {path!r} "
            f"takes {convs[0].shape[1]} channels"
        )


def mismatch_line(error: CheckpointMismatchError, path: str, arguments: dict[str, Any]) -> str:
    """One line for a checkpoint of another architecture: counts and the first offending key."""
    first = [*error.mismatched[:1], *error.unexpected[:1], *error.missing[:1]][0]
    if isinstance(first, tuple):
        first = f"{first[0]} is {first[1]} in the checkpoint, {first[2]} in the model"
    operator = arguments.get("operator", {})
    hyper = ", ".join(f"{k}={v}" for k, v in operator.items() if k not in ("name", "backend"))
    return (
        f"ckpt_path={path!r} does not fit model={arguments['name']} "
        f"(operator={operator.get('name')}{', ' + hyper if hyper else ''}; "
        f"stem={arguments.get('stem')}, base_width={arguments.get('base_width')}): "
        f"{len(error.missing)} missing, {len(error.unexpected)} unexpected, "
        f"{len(error.mismatched)} mismatched keys, e.g. {first}; "
        "set model=/operator=/experiment= to the checkpoint's architecture"
    )


def build_evaluation(cfg: DictConfig) -> Evaluation:
    """Load the checkpoint, build data, model, loggers and trainer; SetupError on bad input."""
    if cfg.split not in SPLITS:
        raise SetupError(f"split must be one of {SPLITS}, got {cfg.split!r}")
    path = cfg.ckpt_path
    obj = read_checkpoint(path)
    try:
        state = extract_state_dict(obj)
    except (TypeError, ValueError) as error:
        raise SetupError(f"ckpt_path={path!r}: {error}") from None
    data = data_choice(cfg)
    try:
        try:
            datamodule: ClassificationDataModule = instantiate(cfg.data)
        except InstantiationException as error:
            raise error.__cause__ or error from None
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise SetupError(str(error)) from error
    check_fits_data(state, path, data, datamodule)

    stored = stored_model(obj)
    if stored is not None:  # our Lightning checkpoint: its own architecture
        named = overridden_keys()
        if ({"model", "model.name"} & named) and cfg.model.name != stored["name"]:
            raise SetupError(
                f"model.name={cfg.model.name} but checkpoint {path!r} holds a {stored['name']}; "
                "a Lightning checkpoint of this project brings its architecture (drop model=...)"
            )
        arguments = {
            **stored,
            "num_classes": datamodule.num_classes,
            "in_channels": datamodule.in_channels,
        }
    else:
        arguments = model_arguments(cfg, datamodule)
        arguments.pop("checkpoint", None)
    try:
        module = ImageClassifier(arguments, label_smoothing=cfg.label_smoothing)
    except (ValueError, TypeError) as error:
        raise SetupError(str(error)) from error
    try:
        load_checkpoint(module.model, obj)
    except CheckpointMismatchError as error:
        raise SetupError(mismatch_line(error, path, arguments)) from None

    image = (1, datamodule.in_channels, datamodule.image_size, datamodule.image_size)
    info = {
        "checkpoint": str(Path(path).resolve()),
        "checkpoint_kind": "lightning" if stored is not None else "state_dict",
        "model": arguments["name"],
        "operator": arguments.get("operator"),
        "data": data,
        "split": cfg.split,
        "params": sum(p.numel() for p in module.model.parameters()),
        "macs": count_macs(module.model, image),
    }
    operator = dict(arguments.get("operator") or {"name": arguments["name"]})
    operator.setdefault("name", arguments["name"])
    identity = run_identity(operator, cfg.task_name, experiment_name())
    loggers = build_loggers(cfg.logger, identity, list(cfg.tags))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers, enable_checkpointing=False)
    for logger in loggers:
        logger.log_hyperparams(
            {"config": OmegaConf.to_container(cfg, resolve=True), **info, **identity}
        )
    return Evaluation(datamodule, module, trainer, info)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation; returns (and writes to ``<run dir>/metrics.json``) the result."""
    if cfg.get("print_config", True):
        console.print_config_tree(cfg, save_dir=cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run = build_evaluation(cfg)
    loop = run.trainer.test if cfg.split == "test" else run.trainer.validate
    results = loop(run.module, datamodule=run.datamodule)
    metrics = {key: float(value) for key, value in (results[0] if results else {}).items()}
    top_k = run.module.top_ks[-1]
    result = {
        "top1": metrics.get(f"{cfg.split}/acc_top1"),
        f"top{top_k}": metrics.get(f"{cfg.split}/acc_top{top_k}"),
        "loss": metrics.get(f"{cfg.split}/loss"),
        **run.info,
    }
    if run.trainer.is_global_zero:
        path = Path(cfg.paths.output_dir) / METRICS_JSON
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        headline = {f"eval/{k}": v for k, v in result.items() if isinstance(v, int | float)}
        update_summaries(run.trainer.loggers, headline)
        for logger in run.trainer.loggers:
            logger.finalize("success")
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()
    return result


@hydra.main(version_base="1.3", config_path="pkg://involution.conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    """Hydra task: prints the result as JSON; returns top-1."""
    try:
        result = evaluate(cfg)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2), flush=True)
    log.info(
        "%s top-1 = %s -> %s",
        result["split"],
        result["top1"],
        Path(cfg.paths.output_dir) / METRICS_JSON,
    )
    return result["top1"]


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
