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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from involution.models import CheckpointMismatchError, count_macs, load_checkpoint
from involution.models.checkpoint import CheckpointFileError, extract_state_dict, read_checkpoint
from involution.models.detection import DETECTORS
from involution.models.segmentation import SEGMENTERS
from involution.runner.guards import RunGuard
from involution.runner.loggers import build_loggers
from involution.runner.preflight import SetupError, check_config, instantiate_data
from involution.runner.resume import (
    EpochCountedOnResume,
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


# The groups that choose a spatial operator, each passed to the model under its own name: the
# backbone's (``operator``: create_model's, create_detector's and create_segmenter's) and, where
# an experiment selects them, the neck's and the heads' (create_detector's ``neck``, ``heads``).
OPERATOR_GROUPS = ("operator", "neck", "heads")
# The data's shape, which every model factory takes: always the data's (a model group that
# sets one must agree). ``image_size`` is filled only where the model group names it (null: the
# data's), as a detector's resize does.
DATA_SHAPE = ("num_classes", "in_channels")


def data_name(cfg: DictConfig) -> str:
    """The data group's option (``data=scenes_detection``), else its class name."""
    return choice("data") or str(cfg.data._target_).rsplit(".", 1)[-1]


def image_size(datamodule: L.LightningDataModule) -> tuple[int, int] | None:
    """The data's typical (H, W) (``image_size``: an int for square images, (H, W) for the
    detection and segmentation data), or None when the data does not fix one."""
    size = getattr(datamodule, "image_size", None)
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def model_arguments(cfg: DictConfig, datamodule: L.LightningDataModule) -> dict[str, Any]:
    """The model's keyword arguments (``create_model``, ``create_detector``,
    ``create_segmenter``): the model group + each selected operator group under its name + the
    data's shape (classes, channels; the image size where the model group names it).

    Raises SetupError when the model group sets a class or channel count the data does not have.
    """
    arguments = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(arguments, dict)
    for key in ("checkpoint", "backbone_checkpoint"):
        if arguments.get(key) is None:
            arguments.pop(key, None)
    for group in OPERATOR_GROUPS:
        if isinstance(cfg.get(group), DictConfig):
            arguments[group] = OmegaConf.to_container(cfg[group], resolve=True)
    for key in DATA_SHAPE:
        found = getattr(datamodule, key)
        if arguments.get(key) is not None and arguments[key] != found:
            raise SetupError(
                f"model.{key}={arguments[key]} but data={data_name(cfg)} has {found} "
                f"{'classes' if key == 'num_classes' else 'channels'}; drop model.{key} "
                "(the data sets it) or choose data that fits"
            )
        arguments[key] = found
    if "image_size" in arguments and arguments["image_size"] is None:
        size = image_size(datamodule)
        arguments["image_size"] = list(size) if size else None
    return arguments


def input_size(
    datamodule: L.LightningDataModule, arguments: Mapping[str, Any], model: torch.nn.Module
) -> tuple[int, int, int, int]:
    """The (1, C, H, W) input the model's multiply-adds are counted at: the data's image size,
    else the model's (``image_size``), else the size a model that resizes its input (a
    torchvision detector) resizes to."""
    size = image_size(datamodule) or arguments.get("image_size")
    if size is None:
        transform = getattr(model, "transform", None)
        size = (transform.min_size[-1], transform.max_size) if transform is not None else None
    if size is None:
        raise SetupError(
            f"data={type(datamodule).__name__} gives no image_size to count the model's cost at"
        )
    height, width = (size, size) if isinstance(size, int) else size
    return (1, datamodule.in_channels, int(height), int(width))


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def build_data(cfg: DictConfig, fitting: bool) -> L.LightningDataModule:
    datamodule = instantiate_data(cfg)
    try:
        if fitting and not getattr(datamodule, "download", False):  # files are there: check now
            datamodule.setup("fit")
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise SetupError(_one_line(error)) from error
    return datamodule


def build_module(
    cfg: DictConfig,
    arguments: dict[str, Any],
    overrides: Mapping[str, Any] | None = None,
    datamodule: L.LightningDataModule | None = None,
) -> L.LightningModule:
    """The task's LightningModule: ``cfg.module`` with ``model=arguments`` (and ``overrides``);
    when it has ``check_data``, asked whether ``datamodule`` fits it (a detector's classes and
    masks, a segmenter's ignored label)."""
    factory = instantiate(cfg.module, _partial_=True, _convert_="all")
    try:
        module = factory(model=arguments, **(overrides or {}))
        if datamodule is not None and hasattr(module, "check_data"):
            module.check_data(datamodule)
    except CheckpointMismatchError as error:
        key = (
            "model.backbone_checkpoint"
            if "backbone_checkpoint" in arguments
            else "model.checkpoint"
        )
        raise SetupError(f"{key}: {error.one_line()}") from error
    except (ValueError, TypeError, FileNotFoundError, CheckpointFileError) as error:
        raise SetupError(_one_line(error)) from error
    return module


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


def check_classes(
    stored: Mapping[str, Any] | None, path: str, data: str, datamodule: L.LightningDataModule
) -> None:
    """A Lightning checkpoint of this project was trained for ``stored["num_classes"]`` classes:
    the data must have as many (any task)."""
    trained = (stored or {}).get("num_classes")
    if trained is not None and trained != datamodule.num_classes:
        raise SetupError(
            f"data={data} has {datamodule.num_classes} classes but checkpoint {path!r} was "
            f"trained for {trained} (model.num_classes); use the data it was trained on"
        )


def task_of(model: str) -> str:
    """The task whose module builds ``model`` (a detector, a segmenter, else a classifier)."""
    if model in DETECTORS:
        return "detection"
    return "segmentation" if model in SEGMENTERS else "classification"


def check_task(model: str, path: str) -> None:
    """A checkpoint's model must be one the selected task's module builds."""
    task = task_of(model)
    selected = choice("task") or task
    if selected != task:
        raise SetupError(
            f"checkpoint {path!r} holds a {model} ({task}) but task={selected}; evaluate it with "
            f"the experiment it was trained with (experiment=...) or task={task} and its data"
        )


def mismatch_line(error: CheckpointMismatchError, path: str, arguments: dict[str, Any]) -> str:
    """One line for a checkpoint of another architecture: counts and the first offending key."""
    first = [*error.mismatched[:1], *error.unexpected[:1], *error.missing[:1]][0]
    if isinstance(first, tuple):
        first = f"{first[0]} is {first[1]} in the checkpoint, {first[2]} in the model"
    operator = arguments.get("operator", {})
    hyper = ", ".join(f"{k}={v}" for k, v in operator.items() if k not in ("name", "backend"))
    shape = (
        ("backbone", "stem", "base_width") if "backbone" in arguments else ("stem", "base_width")
    )
    return (
        f"ckpt_path={path!r} does not fit model={arguments['name']} "
        f"(operator={operator.get('name')}{', ' + hyper if hyper else ''}; "
        f"{', '.join(f'{k}={arguments.get(k)}' for k in shape)}): "
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
    stored = stored_model(weights)
    if stored is not None:
        check_task(stored["name"], path)
    data = data_name(cfg)
    check_weights_fit_data(state, path, data, datamodule)
    check_classes(stored, path, data, datamodule)
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
        shape = {key: getattr(datamodule, key) for key in DATA_SHAPE}
        arguments = {**stored, **shape}
        if "image_size" in arguments and image_size(datamodule):
            arguments["image_size"] = list(image_size(datamodule))
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
        if cfg.get("ckpt_path"):  # a fit that starts from another run's checkpoint
            start = read_checkpoint(str(cfg.ckpt_path), mmap=True)
            stored = stored_model(start) if isinstance(start, dict) else None
            check_classes(stored, str(cfg.ckpt_path), data_name(cfg), datamodule)
    else:
        arguments, info = evaluated_model(cfg, weights, datamodule)
    module = build_module(cfg, arguments, module_overrides, datamodule)
    if weights is not None:
        try:
            load_checkpoint(module.model, weights)
        except CheckpointMismatchError as error:
            raise SetupError(mismatch_line(error, str(cfg.ckpt_path), arguments)) from None
    try:
        resume = None if evaluate else resume_point(cfg, module.state_dict())
    except ResumeError as error:
        raise SetupError(str(error)) from error
    image = input_size(datamodule, arguments, module.model)
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
        callbacks += [RunGuard(), LoaderStateOnResume(), EpochCountedOnResume()]
        trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers, plugins=trainer_plugins()
        )
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams({"config": config, **info, **run_id})
    return Run(cfg, datamodule, module, trainer, info, run_id, resume)
