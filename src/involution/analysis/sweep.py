"""Sweep results as one table: from a Hydra multirun directory, a saved summary, or W&B.

The table is the run records' summary (``involution.runs.summary``: one row per job, the columns
of ``involution.runs.COLUMNS`` plus one per swept key: ``operator.kernel_size``,
``operator.reduction_ratio``, ``operator``, ...); W&B runs are turned into the same columns.
``load_sweep`` is the one entry point the notebooks call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from involution.analysis.errors import AnalysisError, NotAMultirunError, WandbUnavailableError
from involution.analysis.locate import is_multirun, latest_multirun
from involution.runs.records import one_line
from involution.runs.summary import (
    COLUMNS,
    NUMERIC_COLUMNS,
    SUMMARY_JOB_TYPE,
    TEXT_COLUMNS,
    best_epoch_of,
    load_summary,
    summarize,
)

PathLike = str | os.PathLike

WANDB_PREFIX = "wandb:"


# --------------------------------------------------------------------------------------------
# entry point


def load_sweep(
    source: PathLike | None = None,
    *,
    wandb_project: str | None = None,
    wandb_group: str | None = None,
    timeout: float = 10.0,
) -> pd.DataFrame:
    """The sweep table.

    - ``wandb_project`` ("entity/project" or "project"): read the runs from W&B (public API; needs
      network and an API key; ``wandb_group`` narrows to one group). Raises
      ``WandbUnavailableError`` (one line) within about ``timeout`` seconds when it cannot.
    - else ``source``: a multirun directory (summarised by ``involution.runs.summarize``) or
      its ``summary.csv``; ``None`` means the newest multirun under ``multirun/``.
    """
    if wandb_project:
        return load_wandb_sweep(wandb_project, group=wandb_group, timeout=timeout)
    path = Path(source) if source is not None else latest_multirun()
    if path.is_file():
        return load_summary_file(path)
    if not path.exists():
        raise NotAMultirunError(
            f"{path} does not exist: give a Hydra multirun directory or a sweep summary file"
        )
    if not is_multirun(path):
        hint = (
            " (that is a single run; give its parent multirun directory)"
            if (path / ".hydra").is_dir()
            else ""
        )
        raise NotAMultirunError(
            f"{path} is not a Hydra multirun directory: it has no multirun.yaml and no numbered "
            f"job folders with .hydra/{hint}"
        )
    return summarize_multirun(path)


# --------------------------------------------------------------------------------------------
# multirun directories


def summarize_multirun(path: PathLike) -> pd.DataFrame:
    """``involution.runs.summarize(path)`` without writing summary files into the multirun."""
    try:
        table = summarize(Path(path), write=False)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        raise NotAMultirunError(f"{path}: {one_line(error)}") from None
    table = pd.DataFrame(table)
    if table.empty:
        raise NotAMultirunError(f"{path} holds no jobs yet: did the sweep start?")
    return _fill_costs(_normalise(table))


def _fill_costs(table: pd.DataFrame) -> pd.DataFrame:
    """Params and MACs a job did not record, from the hyperparameters its CSV logger wrote."""
    for index, row in table.iterrows():
        if not (math.isnan(row["params"]) or math.isnan(row["macs"])):
            continue
        try:
            hparams = (
                yaml.safe_load((Path(row["run_dir"]) / "csv" / "hparams.yaml").read_text()) or {}
            )
        except (OSError, yaml.YAMLError, TypeError):
            continue
        for key in ("params", "macs"):
            if math.isnan(row[key]) and isinstance(hparams.get(key), int | float):
                table.at[index, key] = float(hparams[key])
    return table


def load_summary_file(path: PathLike) -> pd.DataFrame:
    """A saved ``summary.csv`` (``involution.runs.load_summary``)."""
    path = Path(path)
    try:
        table = pd.DataFrame(load_summary(path))
    except Exception as error:  # any parse failure is the same message to the user
        raise NotAMultirunError(f"{path} is not a sweep summary ({one_line(error)})") from None
    if "best_val_top1" not in table.columns:
        raise NotAMultirunError(
            f"{path} is not a sweep summary: no best_val_top1 column "
            f"(columns: {', '.join(map(str, table.columns))})"
        )
    return _normalise(table)


def _normalise(table: pd.DataFrame) -> pd.DataFrame:
    """Contract columns present (NaN/empty where unknown), numeric metrics numeric."""
    table = table.copy()
    for column in COLUMNS:
        if column not in table.columns:
            table[column] = "" if column in TEXT_COLUMNS else math.nan
    for column in NUMERIC_COLUMNS:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    table["job"] = table["job"].astype(str)
    return table


def swept_columns(table: pd.DataFrame) -> list[str]:
    """The swept keys: the columns that are not among the summary's fixed ones."""
    return [c for c in table.columns if c not in COLUMNS]


# --------------------------------------------------------------------------------------------
# values a sweep did not vary (read from each run's resolved config)


def _dotted(config: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            return None
        config = config[part]
    return config


def _run_config(run_dir: str) -> dict[str, Any]:
    try:
        return yaml.safe_load((Path(run_dir) / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError, TypeError):
        return {}


def with_config_keys(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Add the config values ``keys`` (dotted, e.g. ``operator.kernel_size``; ``operator`` means
    ``operator.name``) that the table lacks, read from each job's ``.hydra/config.yaml``."""
    missing = [k for k in keys if k not in table.columns]
    if not missing:
        return table
    table = table.copy()
    configs = [
        _run_config(d) if not str(d).startswith(WANDB_PREFIX) else {} for d in table["run_dir"]
    ]
    for key in missing:
        path = "operator.name" if key == "operator" else key
        table[key] = [_dotted(config, path) for config in configs]
    return table


# --------------------------------------------------------------------------------------------
# tables for the notebooks


def overview(table: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader looks at first, best job on top."""
    columns = [
        "job",
        *swept_columns(table),
        "status",
        "best_val_top1",
        "best_val_top5",
        "test_top1",
        "params",
        "macs",
        "wall_time_s",
    ]
    return (
        table[columns]
        .sort_values("best_val_top1", ascending=False, na_position="last")
        .reset_index(drop=True)
    )


def ablation_table(
    table: pd.DataFrame,
    x: str = "operator.kernel_size",
    hue: str = "operator.reduction_ratio",
    value: str = "best_val_top1",
) -> pd.DataFrame:
    """``value`` with one row per ``x`` and one column per ``hue`` (the mean over repeated jobs)."""
    table = with_config_keys(table, [x, hue])
    ok = table[table[value].notna()]
    if ok.empty:
        raise AnalysisError(
            f"no job of the sweep has a {value} (all failed?): see the status/error columns"
        )
    return ok.pivot_table(index=x, columns=hue, values=value, aggfunc="mean")


# --------------------------------------------------------------------------------------------
# training curves


def load_metrics(run_dir: str, api: Any = None, timeout: float = 10.0) -> pd.DataFrame:
    """One run's logged metrics: ``<run_dir>/csv/metrics.csv``, or a W&B run's history."""
    run_dir = str(run_dir)
    if run_dir.startswith(WANDB_PREFIX):
        path = run_dir[len(WANDB_PREFIX) :]
        api = api or _wandb_api(path, timeout)
        try:
            history = api.run(path).history(pandas=True, samples=10000)
        except Exception as error:
            raise WandbUnavailableError(f"W&B run {path}: {one_line(error)}") from None
        return pd.DataFrame(history).rename(columns={"trainer/global_step": "step"})
    file = Path(run_dir) / "csv" / "metrics.csv"
    if not file.is_file():
        raise AnalysisError(
            f"{file} does not exist: the run logged no CSV metrics (logger without csv?)"
        )
    return pd.read_csv(file)


def training_curves(
    table: pd.DataFrame, jobs: Sequence[str] | None = None, top: int = 4, api: Any = None
) -> dict[str, pd.DataFrame]:
    """``{job: metrics}`` for ``jobs`` (names from the ``job`` column), default the ``top`` best."""
    if jobs is None:
        ranked = table[table["best_val_top1"].notna()].sort_values("best_val_top1", ascending=False)
        jobs = list(ranked["job"].head(top)) or list(table["job"].head(top))
    jobs = [str(j) for j in jobs]
    unknown = [j for j in jobs if j not in set(table["job"])]
    if unknown:
        raise AnalysisError(f"unknown jobs {unknown}; the sweep has {list(table['job'])}")
    by_job = table.set_index("job")
    return {job: load_metrics(by_job.loc[job, "run_dir"], api=api) for job in jobs}


# --------------------------------------------------------------------------------------------
# W&B


def _wandb_api(project: str, timeout: float) -> Any:
    from involution.runs.wandb_mode import wandb_api_key_configured, wandb_host_reachable

    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not wandb_host_reachable(timeout=min(timeout, 5.0)):
        raise WandbUnavailableError(
            f"W&B project {project!r} cannot be reached: no connection to {host} "
            f"(offline?); load the local multirun directory instead"
        )
    if not wandb_api_key_configured():
        raise WandbUnavailableError(
            f"W&B project {project!r}: no API key (run `wandb login` or set WANDB_API_KEY); "
            "or load the local multirun directory instead"
        )
    import wandb

    try:
        return wandb.Api(timeout=int(math.ceil(timeout)))
    except Exception as error:
        raise WandbUnavailableError(f"W&B project {project!r}: {one_line(error)}") from None


def _operator_config(config: dict[str, Any]) -> dict[str, Any]:
    """The operator dict of a run's W&B config (logged by train.py and by the LightningModule)."""
    for candidate in (
        _dotted(config, "config.operator"),
        _dotted(config, "model.operator"),
        config.get("operator"),
    ):
        if isinstance(candidate, dict):
            return candidate
    return {}


def wandb_runs_table(runs: Iterable[Any]) -> pd.DataFrame:
    """Runs of the W&B public API (``api.runs(...)``) -> the sweep table."""
    rows = []
    for run in runs:
        config = dict(run.config)
        summary = dict(run.summary)
        operator = _operator_config(config)
        try:
            history = pd.DataFrame(run.history(keys=["val/acc_top1", "val/acc_top5"], pandas=True))
        except Exception:  # fall back to the summary's last values
            history = pd.DataFrame()
        stats: dict[str, float] = {
            "test_top1": math.nan,
            **best_epoch_of(history.to_dict("records")),
        }
        # a run without history (or whose history failed to load): the summary's last values
        for key, metric in (
            ("best_val_top1", "val/acc_top1"),
            ("best_val_top5", "val/acc_top5"),
            ("test_top1", "test/acc_top1"),
        ):
            if math.isnan(stats.get(key, math.nan)) and metric in summary:
                stats[key] = float(summary[metric])
        state = str(getattr(run, "state", ""))
        row = {
            "job": run.name,
            "overrides": " ".join(f"operator.{k}={v}" for k, v in operator.items() if k != "name"),
            "operator": operator.get("name"),
            **{f"operator.{k}": v for k, v in operator.items() if k != "name"},
            "status": "ok" if state == "finished" else state,
            "error": "" if state in ("finished", "running") else f"W&B state {state}",
            "params": config.get("params", math.nan),
            "macs": config.get("macs", math.nan),
            "wall_time_s": summary.get("_runtime", math.nan),
            "run_dir": WANDB_PREFIX + "/".join(run.path),
            **stats,
        }
        rows.append(row)
    if not rows:
        return _normalise(pd.DataFrame(columns=list(COLUMNS)))
    table = pd.DataFrame(rows)
    constant = [
        c
        for c in table.columns
        if c.startswith("operator.") and table[c].astype(str).nunique() <= 1
    ]
    return _normalise(table.drop(columns=constant))


def load_wandb_sweep(
    project: str, group: str | None = None, timeout: float = 10.0, api: Any = None
) -> pd.DataFrame:
    """The sweep table from a W&B project (optionally one group): one row per run."""
    api = api or _wandb_api(project, timeout)
    filters = {"group": group} if group else None
    try:
        runs = list(api.runs(project, filters=filters))
    except Exception as error:  # unknown project, permission, timeout: all one line
        raise WandbUnavailableError(f"W&B project {project!r}: {one_line(error)}") from None
    # the dashboard's summary run (sweep charts, no training) is not a job of the sweep
    runs = [run for run in runs if getattr(run, "job_type", None) != SUMMARY_JOB_TYPE]
    if not runs:
        where = f" in group {group!r}" if group else ""
        raise WandbUnavailableError(f"W&B project {project!r} has no runs{where}")
    return wandb_runs_table(runs)
