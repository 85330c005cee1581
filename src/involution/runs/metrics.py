"""The metrics a person reads first, per task: one small table that the closing summary of a run,
the sweep's line per job, its summary table and its dashboard all read.

A run is judged by its ``optimized_metric`` (``conf/task/*.yaml``, e.g. ``val/acc_top1``,
``val/map``, ``val/miou``); the task whose headline list holds that metric's name gives the rest:
classification shows top-1 and top-5, detection box AP (AP50, AP75) and mask AP, segmentation
mIoU and pixel accuracy. The names are those the task modules log under ``val/`` and ``test/``
(``involution.tasks``); every value is a fraction in [0, 1], shown in %.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One headline metric: the name logged under ``val/`` and ``test/`` (``key``), how people
    read it (``label``), its summary columns' stem (``best_val_<column>``, ``test_<column>``) and
    whether the test split's value is shown too (``test``)."""

    key: str
    label: str
    column: str
    test: bool = True


@dataclass(frozen=True)
class Task:
    """A task's headline metrics, the first one its usual ``optimized_metric``."""

    name: str
    metrics: tuple[Metric, ...]

    @property
    def primary(self) -> Metric:
        return self.metrics[0]

    def metric(self, key: str) -> Metric | None:
        return next((m for m in self.metrics if m.key == key), None)


TASKS: tuple[Task, ...] = (
    Task(
        "classification",
        (Metric("acc_top1", "top-1", "top1"), Metric("acc_top5", "top-5", "top5", test=False)),
    ),
    Task(
        "detection",
        (
            Metric("map", "AP", "map"),
            Metric("map_50", "AP50", "map_50", test=False),
            Metric("map_75", "AP75", "map_75", test=False),
            Metric("mask_map", "mask AP", "mask_map"),
        ),
    ),
    Task(
        "segmentation",
        (Metric("miou", "mIoU", "miou"), Metric("pixel_acc", "pixel acc", "pixel_acc", test=False)),
    ),
)
CLASSIFICATION = TASKS[0]


def leaf(metric: str) -> str:
    """``val/acc_top1`` -> ``acc_top1``; ``best/val/map`` -> ``map``."""
    return metric.rsplit("/", 1)[-1]


def task_of(optimized_metric: str | None) -> Task:
    """The task whose headline metrics hold ``optimized_metric`` (a name such as ``val/map_50``
    picks detection); a metric no task lists makes a task of its own with that one metric;
    None: classification."""
    if not optimized_metric:
        return CLASSIFICATION
    key = leaf(optimized_metric)
    for task in TASKS:
        if task.metric(key) is not None:
            return task
    return Task("other", (Metric(key, key, key),))


def judged_first(task: Task, optimized_metric: str | None) -> tuple[Metric, ...]:
    """The task's headline metrics with the one the run is judged by first."""
    if not optimized_metric:
        return task.metrics
    key = leaf(optimized_metric)
    first = [m for m in task.metrics if m.key == key]
    return (*first, *(m for m in task.metrics if m.key != key))


def infer_task(logged: Iterable[str]) -> Task | None:
    """The task whose primary metric was logged (``val/map`` in a metrics.csv header or a job's
    metrics), for records that do not name their ``optimized_metric``; None when none was."""
    names = set(logged)
    for task in TASKS:
        key = task.primary.key
        if {f"val/{key}", f"best/val/{key}", f"test/{key}"} & names:
            return task
    return None


def metric_columns() -> list[str]:
    """Every task's summary columns: ``best_val_<c>`` for each headline metric (the value at the
    best epoch of the optimized metric), ``test_<c>`` for those shown on the test split, and
    ``val_<c>`` (the last epoch's) for each task's primary metric."""
    columns: list[str] = []
    for task in TASKS:
        columns += [f"best_val_{m.column}" for m in task.metrics]
        columns += [f"test_{m.column}" for m in task.metrics if m.test]
        columns.append(f"val_{task.primary.column}")
    return columns


def percent(value: float | None, digits: int = 2) -> str:
    """0.9741 -> ``97.41 %``; None or NaN -> ``-``."""
    if value is None or value != value:
        return "-"
    return f"{100 * value:.{digits}f} %"
