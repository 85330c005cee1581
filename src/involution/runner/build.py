"""The one builder: a composed config -> the data module, the task's LightningModule, the loggers
and the trainer of a run, for every task and every entry point.

- data: ``instantiate(cfg.data)``; a run that fits sets it up at once when its files are on disk,
  so a bad data directory is found here and not at the first batch;
- the model's arguments: the ``model`` group + the ``operator`` group + the data's classes and
  channels (:func:`model_arguments`), or, when evaluating a Lightning checkpoint of ours, the
  architecture it carries;
- the LightningModule: ``cfg.module`` (set by the ``task`` group: its ``_target_`` and
  hyperparameters) called with ``model=<those arguments>``;
- fitting: the ``callbacks`` group + the run guard and the loader-state callback, resuming from
  :func:`~involution.runner.resume.resume_point`; evaluating (``evaluate=True``): the weights of
  ``ckpt_path`` loaded into the model, no callbacks;
- the loggers (the ``logger`` group, told the run's W&B identity) and ``cfg.trainer``.

Every problem is raised as :class:`~involution.runner.preflight.SetupError`: one line naming the
key or file, before the first step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from involution.models import CheckpointMismatchError, count_macs, load_checkpoint
from involution.models.checkpoint import CheckpointFileError, extract_state_dict, read_checkpoint
from involution.runner.guards import RunGuard
from involution.runner.loggers import build_loggers
from involution.runner.preflight import SetupError, check_config
from involution.runner.resume import (
    LoaderStateOnResume,
    ResumeError,
    ResumePoint,
    resume_point,
    trainer_plugins,
)
from involution.runs.identity import run_identity, split_override, sweep_context


@dataclass
class Run:
    """What the builder hands to an entry point's work: the built objects, the config, what the
    run is (``info``: params, macs, input size, and what an evaluation loaded) and its W&B
    ``identity``; ``resume``: the checkpoint a fit continues from."""

    cfg: DictConfig
    datamodule: L.LightningDataModule
    module: L.LightningModule
    trainer: L.Trainer
    info: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    resume: ResumePoint | None = None


def choice(group: str) -> str | None:
    """The option of a config group this run selected (``experiment``, ``data``), if Hydra runs."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def identity(cfg: DictConfig, operator: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run's W&B name, group and tags, from ``operator`` (default: the operator group); in a
    multirun the sweep's group, each job named from its overrides."""
    operator = cfg.operator if operator is None else operator
    return run_identity(operator, cfg.task_name, choice("experiment"), sweep_context(cfg))


def model_arguments(cfg: DictConfig, datamodule: L.LightningDataModule) -> dict[str, Any]:
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


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def build_data(cfg: DictConfig, fitting: bool) -> L.LightningDataModule:
    try:
        try:
            datamodule = instantiate(cfg.data)
        except InstantiationException as error:  # the data module's own message is the useful one
            raise error.__cause__ or error from None
        if fitting and not getattr(datamodule, "download", False):  # files are there: check now
            datamodule.setup("fit")
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise SetupError(_one_line(error)) from error
    return datamodule


def build_module(
    cfg: DictConfig, arguments: dict[str, Any], overrides: Mapping[str, Any] | None = None
) -> L.LightningModule:
    """The task's LightningModule: ``cfg.module`` with ``model=arguments`` (and ``overrides``)."""
    factory = instantiate(cfg.module, _partial_=True, _convert_="all")
    try:
        return factory(model=arguments, **(overrides or {}))
    except CheckpointMismatchError as error:
        raise SetupError(f"model.checkpoint: {error.one_line()}") from error
    except (ValueError, TypeError, FileNotFoundError, CheckpointFileError) as error:
        raise SetupError(_one_line(error)) from error


# ---------------------------------------------------------------------------------------------
# Evaluating a checkpoint's weights


def read_weights(path: str | None) -> dict[str, Any]:
    """The checkpoint to evaluate (``ckpt_path``), as a dict; SetupError naming what is wrong."""
    if not path:
        raise SetupError(
            "ckpt_path is not set: make eval CKPT=<file> "
            "(or python -m involution.eval ckpt_path=<file>)"
        )
    try:
        obj = read_checkpoint(path)
    except FileNotFoundError:
        raise SetupError(f"ckpt_path={path!r}: no such file") from None
    except CheckpointFileError as error:
        raise SetupError(f"ckpt_path={path!r} is not a loadable checkpoint: {error}") from None
    if not isinstance(obj, dict):
        raise SetupError(
            f"ckpt_path={path!r} holds a {type(obj).__name__}, not a checkpoint (a dict of weights)"
        )
    return obj


def stored_model(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``create_model`` arguments a Lightning checkpoint of this project carries, else None."""
    hyper = obj.get("hyper_parameters")
    if (
        "pytorch-lightning_version" in obj
        and isinstance(hyper, dict)
        and isinstance(hyper.get("model"), dict)
    ):
        return dict(hyper["model"])
    return None


def check_weights_fit_data(
    state: Mapping[str, torch.Tensor], path: str, data: str, datamodule: L.LightningDataModule
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


def evaluated_model(
    cfg: DictConfig, weights: Mapping[str, Any], datamodule: L.LightningDataModule
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The architecture to evaluate (a Lightning checkpoint's own, else the model and operator
    groups: a state dict such as an official mmcls file) and what is evaluated, for the record."""
    path = str(cfg.ckpt_path)
    try:
        state = extract_state_dict(weights)
    except (TypeError, ValueError) as error:
        raise SetupError(f"ckpt_path={path!r}: {error}") from None
    data = choice("data") or str(cfg.data._target_).rsplit(".", 1)[-1]
    check_weights_fit_data(state, path, data, datamodule)
    stored = stored_model(weights)
    if stored is None:
        arguments = model_arguments(cfg, datamodule)
        arguments.pop("checkpoint", None)  # the weights are ckpt_path's
    else:
        named = set()
        if HydraConfig.initialized():
            named = {split_override(o)[0] for o in HydraConfig.get().overrides.task}
        if ({"model", "model.name"} & named) and cfg.model.name != stored["name"]:
            raise SetupError(
                f"model.name={cfg.model.name} but checkpoint {path!r} holds a {stored['name']}; "
                "a Lightning checkpoint of this project brings its architecture (drop model=...)"
            )
        shape = {"num_classes": datamodule.num_classes, "in_channels": datamodule.in_channels}
        arguments = {**stored, **shape}
    info = {
        "checkpoint": str(Path(path).resolve()),
        "checkpoint_kind": "state_dict" if stored is None else "lightning",
        "model": arguments["name"],
        "operator": arguments.get("operator"),
        "data": data,
    }
    return arguments, info


# ---------------------------------------------------------------------------------------------
# The builder


def build(
    cfg: DictConfig, evaluate: bool = False, module_overrides: Mapping[str, Any] | None = None
) -> Run:
    """Build a run from a composed config: to fit (resuming where the run directory or
    ``ckpt_path`` says), or with ``evaluate`` to test the weights of ``ckpt_path``.

    ``module_overrides``: keyword arguments of the LightningModule that win over ``cfg.module``.
    Raises SetupError (one line) for any problem with the config, the data or a checkpoint.
    """
    weights = read_weights(cfg.get("ckpt_path")) if evaluate else None
    check_config(cfg)
    datamodule = build_data(cfg, fitting=not evaluate)
    if weights is None:
        arguments, info = model_arguments(cfg, datamodule), {}
    else:
        arguments, info = evaluated_model(cfg, weights, datamodule)
    module = build_module(cfg, arguments, module_overrides)
    if weights is not None:
        try:
            load_checkpoint(module.model, weights)
        except CheckpointMismatchError as error:
            raise SetupError(mismatch_line(error, str(cfg.ckpt_path), arguments)) from None
    try:
        resume = None if evaluate else resume_point(cfg, module.state_dict())
    except ResumeError as error:
        raise SetupError(str(error)) from error
    image = (1, datamodule.in_channels, datamodule.image_size, datamodule.image_size)
    params = sum(p.numel() for p in module.model.parameters())
    info.update(params=params, macs=count_macs(module.model, image), input_size=list(image))
    run_id = identity(cfg, {"name": arguments["name"], **(arguments.get("operator") or {})})
    loggers = build_loggers(
        cfg.logger,
        run_id,
        list(cfg.tags),
        wandb_id=resume.wandb_id if resume else None,
        resume_step=resume.step if resume else None,
    )
    if evaluate:
        trainer = instantiate(cfg.trainer, logger=loggers, enable_checkpointing=False)
    else:
        callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
        callbacks += [RunGuard(), LoaderStateOnResume()]
        trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers, plugins=trainer_plugins()
        )
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams({"config": config, **info, **run_id})
    return Run(cfg, datamodule, module, trainer, info, run_id, resume)
