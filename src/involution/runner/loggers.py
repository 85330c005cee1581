"""Experiment loggers: W&B (online when logged in, offline otherwise, never hanging: see
``involution.runs.wandb_mode``) and CSV, built from the ``logger`` group's entries."""

from __future__ import annotations

import csv
import inspect
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_object, instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from involution.runs.wandb_mode import resolve_wandb_mode


@dataclass(frozen=True)
class RunContext:
    """What a logger factory learns from the run rather than from its config entry.

    Attributes:
        identity: ``run_identity``'s ``name``, ``group`` and ``tags`` (W&B's defaults).
        extra_tags: the entry config's ``tags`` (added to every W&B run's tags).
        wandb_id: the W&B run id a resumed run's own checkpoint carries (None: a new run).
        resume_step: the optimizer step that checkpoint was taken at (None: a fresh start).
    """

    identity: Mapping[str, Any] = field(default_factory=dict)
    extra_tags: Sequence[str] = ()
    wandb_id: str | None = None
    resume_step: int | None = None


def csv_logger(save_dir: str, context: RunContext | None = None) -> CSVLogger:
    """Lightning's CSVLogger writing ``<save_dir>/csv/metrics.csv``, resume-aware.

    When the run resumes from the checkpoint taken after ``context.resume_step`` optimizer steps,
    the rows of the steps before (logged with steps ``0 .. resume_step - 1``) are kept (Lightning
    would delete the file) and the later ones, which the resumed run logs again, are dropped.

    Args:
        save_dir: the run directory.
        context: the run's resume step (None or no step: a fresh file).

    Returns:
        The logger, its ``metrics.csv`` already holding the kept rows.

    Example:
        >>> logger = csv_logger("outputs/run")  # doctest: +SKIP
    """
    resume_step = context.resume_step if context is not None else None
    logger = CSVLogger(save_dir=save_dir, name="csv", version="")
    path = Path(logger.log_dir) / "metrics.csv"
    kept: list[dict[str, str]] = []
    header: list[str] = []
    if resume_step is not None and path.is_file():
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            kept = [
                row for row in reader if row.get("step") and int(float(row["step"])) < resume_step
            ]
    with warnings.catch_warnings():  # the rows are kept below, not deleted as it would warn
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists")
        writer = logger.experiment  # creating the writer deletes an existing metrics.csv
    if header:
        with path.open("w", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=header)
            out.writeheader()
            out.writerows(kept)
        writer.metrics_keys = sorted(header)
    return logger


def wandb_logger(
    save_dir: str,
    context: RunContext | None = None,
    project: str = "involution",
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    tags: Sequence[str] | None = None,
    mode: str = "auto",
    init_timeout: float = 30,
) -> WandbLogger | None:
    """Lightning's WandbLogger, online when W&B is reachable with a key, else offline; or None.

    Args:
        save_dir: the run directory (W&B writes ``<save_dir>/wandb``).
        context: the run's derived name, group and tags, its extra tags, and the W&B run id to
            continue (``wandb.init(id=..., resume="allow")``) when it resumes its own checkpoint.
        project, entity: the W&B project and entity.
        group, name: null takes the derived ones (``run_identity``).
        tags: added to the derived tags and the entry config's ``tags``.
        mode: ``auto`` | ``online`` | ``offline`` | ``disabled`` (see :func:`resolve_wandb_mode`).
        init_timeout: seconds before an online start gives up.

    Returns:
        The logger, or None when the mode resolves to ``disabled``.

    Raises:
        ValueError: ``mode`` (or ``WANDB_MODE``) is not one of ``WANDB_MODES``.

    Example:
        >>> logger = wandb_logger("outputs/run", mode="offline")  # doctest: +SKIP
    """
    context = context or RunContext()
    mode = resolve_wandb_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    identity = context.identity
    all_tags = [*identity.get("tags", ()), *context.extra_tags, *(tags or ())]
    resume = {"id": context.wandb_id, "resume": "allow"} if context.wandb_id else {}
    logger = WandbLogger(
        project=project,
        entity=entity,
        group=group or identity.get("group"),
        name=name or identity.get("name"),
        tags=list(dict.fromkeys(all_tags)),
        save_dir=save_dir,
        offline=mode == "offline",
        settings=wandb.Settings(init_timeout=float(init_timeout), silent=True),
        **resume,
    )
    # Lightning passes anonymous=None to wandb.init, which W&B warns about on every run ("the
    # anonymous setting has no effect"); we never set it, so it is not passed at all.
    logger._wandb_init.pop("anonymous", None)
    return logger


def wandb_status() -> dict[str, str] | None:
    """The W&B run this process has open: ``{"mode": "online", "url": ...}``, ``{"mode":
    "offline", "dir": <the directory wandb sync uploads>}``, ``{"mode": "disabled"}``; None when
    no W&B run is open. Read before the run is finished."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return None
    if run.disabled:
        return {"mode": "disabled"}
    if run.offline:
        return {"mode": "offline", "dir": str(Path(run.dir).parent)}
    return {"mode": "online", "url": str(run.url)}


def build_loggers(
    logger_cfg: Mapping[str, Any],
    identity: Mapping[str, Any],
    extra_tags: Sequence[str],
    wandb_id: str | None = None,
    resume_step: int | None = None,
) -> list[Logger]:
    """Instantiate every entry of the logger group, in the group's order (the first is
    Lightning's main logger: ``trainer.log_dir``).

    Each entry is a ``_target_`` config; a target that takes a ``context`` argument (the factories
    above) receives the run's :class:`RunContext`, others (any Lightning logger) get only their
    keys. A null entry (``logger.wandb=null``) or a factory returning None (W&B disabled) adds
    nothing.

    Args:
        logger_cfg: the ``logger`` group (name -> ``_target_`` config).
        identity: ``run_identity``'s name, group and tags.
        extra_tags: the entry config's ``tags``.
        wandb_id: the W&B run a resumed run continues (the id its own checkpoint carries).
        resume_step: the step of that checkpoint; the CSV history is kept up to it.

    Returns:
        The loggers, possibly none.

    Raises:
        ValueError: an entry has no ``_target_``.

    Example:
        >>> build_loggers(  # doctest: +SKIP
        ...     cfg.logger, run_identity(cfg.operator, "train", None), []
        ... )
    """
    context = RunContext(dict(identity), tuple(extra_tags), wandb_id, resume_step)
    loggers: list[Logger] = []
    for key, entry in logger_cfg.items():
        if entry is None:
            continue
        if "_target_" not in entry:
            raise ValueError(f"logger.{key} needs a _target_ (a Lightning logger or a factory)")
        factory = instantiate(entry, _partial_=True, _convert_="all")
        takes_context = "context" in inspect.signature(get_object(entry["_target_"])).parameters
        built = factory(context=context) if takes_context else factory()
        if built is not None:
            loggers.append(built)
    return loggers


@rank_zero_only  # other ranks hold a dummy experiment without a summary
def update_summaries(loggers: list[Logger], values: Mapping[str, float]) -> None:
    """Write final values (e.g. ``best/val/acc_top1``) into each W&B run's summary, where W&B
    tables, parallel coordinates and the sweep dashboard (involution.runs.dashboard) read them."""
    if not values:
        return
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(dict(values))
