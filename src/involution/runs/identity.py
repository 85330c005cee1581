"""The sweep a job belongs to, and the run's W&B identity (name, group, tags) derived from it.

In a multirun every job of one sweep shares the W&B group ``<sweep name>-<start time>`` and is
named from its swept values; the summary's columns (:mod:`involution.runs.summary`) are the same
swept keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from involution.runs.records import read_yaml

# Overrides that choose what to sweep rather than being swept.
NOT_SWEPT = ("sweep", "hparams_search")
# Short names of operator hyperparameters in run names (involution-k7-r4-gc16-d1).
_SHORT = {
    "kernel_size": "k", "reduction_ratio": "r", "group_channels": "gc", "dilation": "d",
    "groups": "g", "heads": "h",
}  # fmt: skip
# Operator keys that say how the op computes, not which architecture it is.
_NOT_ARCHITECTURE = ("name", "backend", "recompute_kernel")


def split_override(override: str) -> tuple[str, str]:
    """``"+a.b=1"`` -> ``("a.b", "1")``; a deletion ``"~a"`` -> ``("a", "")``."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def is_swept_candidate(key: str) -> bool:
    """Whether an override key may be a swept key (not the sweep's choice, not Hydra's own)."""
    return key not in NOT_SWEPT and not key.startswith("hydra")


def sweep_time(sweep_dir: str | Path) -> str:
    """The sweep's start time from its directory (``.../2025-01-01/12-00-00`` ->
    ``2025-01-01_12-00-00``); the directory's name when it holds no date and time."""
    found = re.search(r"(\d{4}-\d{2}-\d{2})\D+(\d{2}-\d{2}-\d{2})", str(sweep_dir))
    return f"{found.group(1)}_{found.group(2)}" if found else Path(str(sweep_dir)).name


def swept_keys(sweep_dir: str | Path, params: Sequence[str] = ()) -> list[str] | None:
    """The keys a sweep varies: those of ``hydra.sweeper.params`` (sweep and Optuna configs) and the
    command line's sweep overrides (``a=1,2``, from the sweep's multirun.yaml); None when neither
    source is there (a job whose sweep directory is not readable from where it runs)."""
    keys = list(params)
    master = read_yaml(Path(sweep_dir) / "multirun.yaml")
    if isinstance(master, dict):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        task = master.get("hydra", {}).get("overrides", {}).get("task") or []
        try:
            parsed = OverridesParser.create().parse_overrides(list(task))
        except Exception:  # an override the parser rejects names no swept key
            parsed = []
        keys += [o.key_or_group for o in parsed if o.is_sweep_override()]
    elif not keys:
        return None
    return list(dict.fromkeys(keys))


def swept_overrides(hydra_cfg: DictConfig) -> list[tuple[str, str]]:
    """This job's values of the swept keys (all its task overrides when those are unknown)."""
    pairs = [split_override(o) for o in hydra_cfg.overrides.task]
    params = list(OmegaConf.select(hydra_cfg, "sweeper.params", default=None) or {})
    keys = swept_keys(hydra_cfg.sweep.dir, params)
    if keys is not None:
        return [(key, value) for key, value in pairs if key in keys]
    return [(key, value) for key, value in pairs if is_swept_candidate(key)]


def sweep_context(cfg: DictConfig) -> dict[str, Any] | None:
    """In a multirun job: the sweep's name and start time and this job's swept overrides; else None.

    The name is ``sweep.name`` (``conf/sweep/*``), ``hparams_search.name``
    (``conf/hparams_search/*``) or ``multirun`` for a sweep given on the command line only.
    """
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    name = (
        OmegaConf.select(cfg, "sweep.name")
        or OmegaConf.select(cfg, "hparams_search.name")
        or "multirun"
    )
    return {
        "name": str(name),
        "time": sweep_time(hydra_cfg.sweep.dir),
        "job": int(hydra_cfg.job.num),
        "overrides": swept_overrides(hydra_cfg),
    }


def run_identity(
    operator: Mapping[str, Any],
    task_name: str,
    experiment: str | None,
    sweep: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """W&B name (e.g. ``involution-k7-r4-gc16-d1``), group and tags from the operator's
    hyperparameters.

    In a sweep (``sweep``: name, time and this job's swept ``(key, value)`` overrides, from
    :func:`sweep_context`) all jobs share the group ``<sweep name>-<start time>``, each is named
    from its swept values (``involution-k3-r8``; ``lr0.2`` for ``module.lr=0.2``) and tagged
    ``sweep=<name>``.
    """
    hyper = sorted((key, value) for key, value in operator.items() if key not in _NOT_ARCHITECTURE)
    name = "-".join([str(operator["name"]), *(f"{_SHORT.get(k, k)}{v}" for k, v in hyper)])
    tags = [str(operator["name"]), *(f"{key}={value}" for key, value in hyper)]
    group = f"{task_name}-{experiment}" if experiment else task_name
    if sweep:
        group = f"{sweep['name']}-{sweep['time']}"
        leaf = [
            (key.rsplit(".", 1)[-1], value)
            for key, value in sweep.get("overrides", ())
            if key != "operator"
        ]
        if leaf:
            name = "-".join([str(operator["name"]), *(f"{_SHORT.get(k, k)}{v}" for k, v in leaf)])
        tags.append(f"sweep={sweep['name']}")
    return {"name": name, "group": group, "tags": tags}
