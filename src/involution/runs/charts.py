"""The data of a sweep's charts, shared by its W&B workspace (:mod:`involution.runs.dashboard`)
and its PNG files and HTML page (:mod:`involution.runs.render`): the summary table and swept keys
of a multirun directory, the metric its jobs are judged by, and the series of each chart (the
best metric against a swept key, one line per value of the other swept keys; against
multiply-adds, one line per operator)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from involution.runs.metrics import Metric, Task, judged_first, task_of
from involution.runs.records import read_yaml
from involution.runs.summary import COLUMNS, load_summary, sweep_task

if TYPE_CHECKING:
    import pandas as pd


class DashboardError(ValueError):
    """The multirun directory cannot be shown as a dashboard; the message is the one line shown."""


class Judged:
    """What a sweep's ``metric`` (its jobs' optimized metric) and ``frame`` say about its charts."""

    metric: str
    frame: pd.DataFrame

    @property
    def task(self) -> Task:
        return task_of(self.metric)

    @property
    def primary(self) -> Metric:
        """The metric the sweep is judged by."""
        return judged_first(self.task, self.metric)[0]

    def charted(self) -> list[Metric]:
        """The metrics charted against the swept keys and multiply-adds: the judged one, and a
        detection sweep's mask AP when its jobs have one."""
        metrics = [self.primary]
        mask = self.task.metric("mask_map")
        column = f"best_val_{mask.column}" if mask else ""
        if mask and mask not in metrics and column in self.frame:
            if self.frame[column].notna().any():
                metrics.append(mask)
        return metrics


@dataclass
class SweepTable(Judged):
    """A sweep's summary table (one row per job), its swept keys and the metric it is judged by."""

    root: Path
    name: str
    swept: list[str]
    frame: pd.DataFrame = field(repr=False)
    metric: str = "val/acc_top1"


def sweep_name(root: Path) -> str | None:
    """``sweep.name`` (or ``hparams_search.name``) of the sweep's multirun.yaml."""
    master = read_yaml(root / "multirun.yaml")
    if not isinstance(master, dict):
        return None
    return (master.get("sweep") or {}).get("name") or (master.get("hparams_search") or {}).get(
        "name"
    )


def read_table(root: str | Path) -> SweepTable:
    """The sweep's summary (its summary.csv, else built now), swept keys and judged metric;
    DashboardError when it has no jobs or no swept key."""
    root = Path(root)
    try:
        frame = load_summary(root)
    except FileNotFoundError as error:
        raise DashboardError(str(error)) from None
    if frame.empty:
        raise DashboardError(f"{root}: no jobs (is it a multirun directory?)")
    swept = [column for column in frame.columns if column not in COLUMNS]
    if not swept:
        raise DashboardError(f"{root}: no swept keys found (multirun.yaml or the jobs' overrides)")
    name = sweep_name(root) or root.name
    return SweepTable(root, str(name), swept, frame, sweep_task(frame)[1] or "val/acc_top1")


def key_leaf(key: str) -> str:
    """``operator.kernel_size`` -> ``kernel_size``."""
    return key.rsplit(".", 1)[-1]


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def plain(value: Any) -> Any:
    """4.0 -> 4 (a column with gaps turns ints into floats)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """``reduction_ratio=4, dilation=1`` (``all jobs`` without keys)."""
    return ", ".join(f"{key_leaf(k)}={plain(v)}" for k, v in zip(keys, values)) or "all jobs"


def series(
    frame: pd.DataFrame, x: str, by: Sequence[str], column: str = "best_val_top1"
) -> tuple[list[list[Any]], list[list[float]], list[str]]:
    """xs, ys and a label per line: ``column`` against ``x``, one line per value of ``by``, the
    finished jobs only; a null x (``group_channels=null``: one group) has no place on the axis."""
    done = frame[(frame["status"] == "ok") & frame[column].map(finite) & frame[x].map(finite)]
    xs, ys, keys = [], [], []
    groups = done.groupby(list(by), sort=True, dropna=False) if by else [((), done)]
    for values, part in groups:
        values = values if isinstance(values, tuple) else (values,)
        part = part.sort_values(x)
        xs.append([plain(v) for v in part[x]])
        ys.append([float(v) for v in part[column]])
        keys.append(label(by, values))
    return xs, ys, keys


def operator_names(frame: pd.DataFrame) -> list[str]:
    """The operator of each job: its W&B name starts with it (involution-k7-r4)."""
    return [str(name).split("-", 1)[0] if name else "?" for name in frame["name"]]


def numeric_keys(table: SweepTable) -> list[str]:
    import pandas as pd

    return [k for k in table.swept if pd.api.types.is_numeric_dtype(table.frame[k])]
