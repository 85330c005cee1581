"""Run records in one home: what each run wrote down, the table of a sweep and its dashboard.
Reads and writes files (and W&B); imports nothing of the training side.

- :mod:`~involution.runs.records`: ``job.json`` (statuses, :class:`JobRecorder`,
  :func:`read_record`) and the one-line error text (:func:`one_line`);
- :mod:`~involution.runs.identity`: the sweep a job belongs to and its W&B name, group and tags;
- :mod:`~involution.runs.wandb_mode`: whether W&B runs online or offline;
- :mod:`~involution.runs.locate`: the project root and the multirun directories under it;
- :mod:`~involution.runs.summary`: the summary table of a multirun (columns, :func:`summarize`,
  :func:`load_summary`), ``python -m involution.runs summarize [DIR]``;
- :mod:`~involution.runs.callback`: the Hydra callback that summarizes every multirun;
- :mod:`~involution.runs.dashboard`: a sweep's W&B workspace,
  ``python -m involution.runs dashboard [DIR]``.
"""

from involution.runs.identity import run_identity, split_override, sweep_context, sweep_time
from involution.runs.locate import is_multirun, latest_multirun, project_root
from involution.runs.records import (
    NOT_OK,
    RECORD,
    STATUSES,
    JobRecorder,
    NonFiniteMetrics,
    check_finite,
    one_line,
    process_alive,
    read_record,
    read_yaml,
)
from involution.runs.summary import (
    COLUMNS,
    SUMMARY_CSV,
    SUMMARY_JOB_TYPE,
    SUMMARY_MD,
    TEXT_COLUMNS,
    best_epoch,
    best_epoch_of,
    count_line,
    counts,
    has_failures,
    load_summary,
    summarize,
    to_markdown,
)

__all__ = [
    "COLUMNS",
    "NOT_OK",
    "RECORD",
    "STATUSES",
    "SUMMARY_CSV",
    "SUMMARY_JOB_TYPE",
    "SUMMARY_MD",
    "TEXT_COLUMNS",
    "JobRecorder",
    "NonFiniteMetrics",
    "best_epoch",
    "best_epoch_of",
    "check_finite",
    "count_line",
    "counts",
    "has_failures",
    "is_multirun",
    "latest_multirun",
    "load_summary",
    "one_line",
    "process_alive",
    "project_root",
    "read_record",
    "read_yaml",
    "run_identity",
    "split_override",
    "summarize",
    "sweep_context",
    "sweep_time",
    "to_markdown",
]
