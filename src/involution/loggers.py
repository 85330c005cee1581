"""Experiment loggers: W&B (online when logged in, offline otherwise, never hanging) and CSV."""

from __future__ import annotations

import csv
import logging
import netrc
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_api_key_configured() -> bool:
    """True when W&B has a key: WANDB_API_KEY, or a ~/.netrc entry for the W&B host (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_host_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect to the W&B host: seconds at most, so a dead network never stalls a run."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` -> online if a key is configured and the host answers, else offline.

    An explicit ``WANDB_MODE`` in the environment wins over the config, as in wandb itself.
    """
    mode = os.environ.get("WANDB_MODE", mode)
    # Lightning's WandbLogger sets WANDB_MODE=dryrun (wandb's old name for offline) when offline.
    mode = "offline" if mode == "dryrun" else mode
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode must be one of {WANDB_MODES}, got {mode!r}")
    if mode == "auto":
        mode = "online" if wandb_api_key_configured() else "offline"
    if mode == "online" and not wandb_host_reachable():
        log.warning("W&B host unreachable: logging offline (sync later with `wandb sync`)")
        mode = "offline"
    return mode


def csv_logger(save_dir: str, resume_step: int | None = None) -> CSVLogger:
    """Lightning's CSVLogger in ``<save_dir>/csv``; when a run resumes from the checkpoint taken
    after ``resume_step`` optimizer steps, the rows of the steps before (logged with steps
    ``0 .. resume_step - 1``) are kept (Lightning would delete the file) and the later ones, which
    the resumed run logs again, are dropped."""
    logger = CSVLogger(save_dir=save_dir, name="csv", version="")
    path = Path(logger.log_dir) / "metrics.csv"
    kept: list[dict[str, str]] = []
    header: list[str] = []
    if resume_step is not None and path.is_file():
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            kept = [row for row in reader if row.get("step") and int(float(row["step"])) < resume_step]
    writer = logger.experiment  # creating the writer deletes an existing metrics.csv
    if header:
        with path.open("w", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=header)
            out.writeheader()
            out.writerows(kept)
        writer.metrics_keys = sorted(header)
    return logger


def build_loggers(
    logger_cfg: Mapping[str, Any],
    identity: Mapping[str, Any],
    extra_tags: list[str],
    wandb_id: str | None = None,
    resume_step: int | None = None,
) -> list[Logger]:
    """CSV always; W&B unless the config has no ``wandb`` entry or its mode resolves to disabled.

    A resumed run (from the checkpoint of step ``resume_step``) keeps its CSV rows up to that step
    and, given ``wandb_id`` (the id its checkpoint carries), continues that W&B run
    (``wandb.init(id=..., resume="allow")``) instead of opening a new one.
    """
    loggers: list[Logger] = []
    if "csv" in logger_cfg:
        loggers.append(csv_logger(logger_cfg["csv"]["save_dir"], resume_step))
    wandb_cfg = logger_cfg.get("wandb")
    if wandb_cfg is not None:
        mode = resolve_wandb_mode(wandb_cfg.get("mode", "auto"))
        if mode != "disabled":
            import wandb

            tags = [*identity["tags"], *extra_tags, *(wandb_cfg.get("tags") or [])]
            loggers.append(
                WandbLogger(
                    project=wandb_cfg.get("project", "involution"),
                    entity=wandb_cfg.get("entity"),
                    group=wandb_cfg.get("group") or identity["group"],
                    name=wandb_cfg.get("name") or identity["name"],
                    tags=list(dict.fromkeys(tags)),
                    save_dir=wandb_cfg["save_dir"],
                    offline=mode == "offline",
                    settings=wandb.Settings(init_timeout=float(wandb_cfg.get("init_timeout", 30)), silent=True),
                    **({"id": wandb_id, "resume": "allow"} if wandb_id else {}),
                )
            )
    return loggers


@rank_zero_only  # other ranks hold a dummy experiment without a summary
def update_summaries(loggers: list[Logger], values: Mapping[str, float]) -> None:
    """Write final values (e.g. ``best/val/acc_top1``) into each W&B run's summary, where W&B
    tables, parallel coordinates and the sweep dashboard (involution.dashboard) read them."""
    if not values:
        return
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(dict(values))
