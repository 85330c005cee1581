"""The summary table of a multirun: one row per job, from the jobs' records and metrics files.

A multirun (``python -m involution.train sweep=kernel_reduction``, ``make sweep``) writes
``multirun/<task>/<date>/<time>/<job num>/`` per job, each with its ``job.json``
(:mod:`involution.runs.records`). :func:`summarize` turns such a directory, finished or not, into
``summary.csv`` + ``summary.md``; the notebooks, the W&B dashboard and the Hydra callback
(:mod:`involution.runs.callback`) read the same table. From the shell::

    python -m involution.runs summarize multirun/train/2025-01-01/12-00-00
    python -m involution.runs summarize          # the latest multirun under ./multirun
"""

from __future__ import annotations

import argparse
import csv
import math
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from involution.runs.identity import is_swept_candidate, split_override, swept_keys
from involution.runs.locate import latest_multirun
from involution.runs.metrics import Task, infer_task, judged_first, metric_columns, task_of
from involution.runs.records import NOT_OK, STATUSES, process_alive, read_record, read_yaml

if TYPE_CHECKING:
    import pandas as pd

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
# The summary's fixed columns (the swept keys come after ``job``, one column each, named as the
# key). The metric columns are every task's (involution.runs.metrics: ``best_val_top1``,
# ``test_top1``, ``best_val_map``, ``best_val_mask_map``, ``best_val_miou``, ...), each a fraction
# in [0, 1]; a job fills its own task's. ``best_epoch``: the epoch of the best optimized metric.
COLUMNS = (
    "job", "status", *metric_columns(), "epochs", "best_epoch", "params", "macs", "wall_time_s",
    "error", "overrides", "name", "group", "optimized_metric", "run_dir",
)  # fmt: skip
TEXT_COLUMNS = ("status", "error", "overrides", "name", "group", "optimized_metric", "run_dir")
NUMERIC_COLUMNS = tuple(c for c in COLUMNS if c not in TEXT_COLUMNS and c != "job")
# The W&B job type of the run that holds a sweep's own charts and table (runs.dashboard);
# readers of a sweep's runs leave it out.
SUMMARY_JOB_TYPE = "sweep-summary"


def expected_jobs(multirun_dir: Path) -> dict[int, list[str]]:
    """Job number -> overrides of every job a basic-sweeper multirun will run (from multirun.yaml),
    so that jobs not started yet show up as ``missing``. Empty for other sweepers (Optuna)."""
    master = read_yaml(multirun_dir / "multirun.yaml")
    if not isinstance(master, dict):
        return {}
    sweeper = master.get("hydra", {}).get("sweeper", {})
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return {}
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    task = list(master.get("hydra", {}).get("overrides", {}).get("task") or [])
    try:
        overrides = OverridesParser.create().parse_overrides([*params, *task])
        jobs = BasicSweeper.split_arguments(overrides, None)[0]
    except Exception:  # a sweep the parser cannot expand without the config tree (globs)
        return {}
    return {num: list(job) for num, job in enumerate(jobs)}


def _sweeper_params(multirun_dir: Path, job_dirs: Sequence[Path]) -> list[str]:
    """The keys of ``hydra.sweeper.params`` (multirun.yaml, else any job's .hydra/hydra.yaml)."""
    for path in (multirun_dir / "multirun.yaml", *(d / ".hydra" / "hydra.yaml" for d in job_dirs)):
        data = read_yaml(path)
        if isinstance(data, dict):
            return list(data.get("hydra", {}).get("sweeper", {}).get("params") or {})
    return []


def _number(value: Any) -> float | None:
    """A metric value (CSV text, a float, NaN, None) as a float; None when it is not one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def best_epoch_of(rows: Iterable[Mapping[str, Any]], metric: str | None = None) -> dict[str, float]:
    """From logged rows (``csv/metrics.csv`` lines or a W&B history): the epoch with the best
    ``metric`` (the optimized metric, default ``val/acc_top1``) and, at that epoch, every headline
    metric of its task (``best_val_top1``, ``best_val_top5``; ``best_val_map``, ...), the task's
    primary metric at the last validated epoch (``val_top1``), the number of validated epochs and
    ``best_epoch``; rows without the metric (training steps) are skipped, and no row gives
    ``{}``."""
    metric = metric or "val/acc_top1"
    task = task_of(metric)
    scored = [(_number(row.get(metric)), row) for row in rows]
    validated = [(value, row) for value, row in scored if value is not None]
    if not validated:
        return {}
    _, best = max(validated, key=lambda pair: pair[0])  # the first of equal epochs
    out: dict[str, float] = {"epochs": float(len(validated))}
    for item in task.metrics:
        value = _number(best.get(f"val/{item.key}"))
        if value is not None:
            out[f"best_val_{item.column}"] = value
    last = _number(validated[-1][1].get(f"val/{task.primary.key}"))
    if last is not None:
        out[f"val_{task.primary.column}"] = last
    epoch = _number(best.get("epoch"))
    if epoch is not None:
        out["best_epoch"] = epoch
    return out


def csv_rows(job_dir: Path) -> list[dict[str, str]]:
    path = job_dir / "csv" / "metrics.csv"
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except (FileNotFoundError, OSError, csv.Error):
        return []


def best_epoch(job_dir: Path, metric: str | None = None) -> dict[str, float]:
    """:func:`best_epoch_of` a job's ``csv/metrics.csv`` (works while the job still runs)."""
    return best_epoch_of(csv_rows(job_dir), metric)


def optimized_metric(job_dir: Path, record: Mapping[str, Any] | None = None) -> str | None:
    """The metric a job is judged by: its record's, else its resolved config's, else the primary
    metric of the task whose metrics it logged (metrics.csv's header); None when unknown."""
    if record and record.get("optimized_metric"):
        return str(record["optimized_metric"])
    config = read_yaml(job_dir / ".hydra" / "config.yaml")
    if isinstance(config, dict) and isinstance(config.get("optimized_metric"), str):
        return config["optimized_metric"]
    rows = csv_rows(job_dir)
    logged = set(rows[0]) if rows else set()
    logged |= set((record or {}).get("metrics") or {})
    task = infer_task(logged)
    return f"val/{task.primary.key}" if task else None


def _record_metrics(metrics: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """A finished job's metric columns from its record: the best of the optimized metric, the last
    validated values of the others (the CSV's best epoch replaces them when there is one) and the
    test values."""
    task = task_of(metric)
    row: dict[str, Any] = {}
    for item in task.metrics:
        row[f"best_val_{item.column}"] = metrics.get(f"val/{item.key}")
        if item.test:
            row[f"test_{item.column}"] = metrics.get(f"test/{item.key}")
    row[f"val_{task.primary.column}"] = metrics.get(f"val/{task.primary.key}")
    best = metrics.get(f"best/{metric}")
    judged = task.metric(metric.rsplit("/", 1)[-1])
    if best is not None and judged is not None:
        row[f"best_val_{judged.column}"] = best
    return row


def job_row(num: int, job_dir: Path, expected: list[str] | None, finished: bool) -> dict[str, Any]:
    """One job's summary row (plus ``_overrides``, the list the swept columns are read from)."""
    record = read_record(job_dir) if job_dir.is_dir() else None
    overrides = (record or {}).get("overrides")
    if overrides is None:
        overrides = read_yaml(job_dir / ".hydra" / "overrides.yaml") or expected or []
    metric = optimized_metric(job_dir, record) if job_dir.is_dir() else None
    row: dict[str, Any] = {key: math.nan for key in COLUMNS}
    row.update(
        job=num, error="", overrides=" ".join(overrides), name="", group="", run_dir=str(job_dir),
        optimized_metric=metric or "",
    )  # fmt: skip
    row["_overrides"] = overrides
    if record is None:
        row["status"] = "missing"
        if finished:
            row.update(
                status="failed", error="no result recorded: the job did not run or was killed"
            )
    else:
        row.update(
            status=record.get("status", "missing"), error=record.get("error") or "",
            name=record.get("name") or "", group=record.get("group") or "",
            params=record.get("params"), macs=record.get("macs"),
            wall_time_s=record.get("wall_time_s"),
            **_record_metrics(record.get("metrics") or {}, metric or "val/acc_top1"),
        )  # fmt: skip
        if row["status"] == "running":
            dead = record.get("host") == socket.gethostname() and not process_alive(record)
            if dead or finished:
                ended = f"process {record.get('pid')} on {record.get('host')} ended (killed?)"
                row.update(status="failed", error=f"no result recorded: {ended}")
    row.update(best_epoch(job_dir, metric))
    return {key: (math.nan if value is None else value) for key, value in row.items()}


def _parse_value(text: str) -> Any:
    if text in ("null", "None", ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def summarize(
    multirun_dir: str | Path, *, finished: bool = False, write: bool = True
) -> pd.DataFrame:
    """The summary table of a multirun directory, finished or not: one row per job.

    Columns: ``job``, then one per swept key (named as the key, e.g. ``operator.kernel_size``,
    numeric where the values are), then :data:`COLUMNS` (accuracies are fractions in [0, 1]; the
    best val top-5 is that of the best val top-1 epoch; ``wall_time_s`` is the whole job's).
    ``status`` is one of :data:`~involution.runs.records.STATUSES`; ``missing`` is a job the
    sweep will run but has not started.

    Args:
        multirun_dir: the multirun directory (``multirun/<task>/<date>/<time>``).
        finished: the sweep is over: running and missing jobs count as failed.
        write: write ``summary.csv`` and ``summary.md`` into ``multirun_dir``.

    Returns:
        The table as a pandas DataFrame, jobs in order.

    Raises:
        FileNotFoundError: ``multirun_dir`` is not a directory.

    Example:
        >>> frame = summarize("multirun/train/2025-01-01/12-00-00", write=False)  # doctest: +SKIP
        >>> frame[["job", "operator.kernel_size", "status", "best_val_top1"]]  # doctest: +SKIP
    """
    import pandas as pd

    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no multirun directory {root}")
    dirs = {int(p.name): p for p in root.iterdir() if p.is_dir() and p.name.isdigit()}
    expected = expected_jobs(root)
    rows = [
        job_row(n, dirs.get(n, root / str(n)), expected.get(n), finished)
        for n in sorted(set(dirs) | set(expected))
    ]
    values = [dict(split_override(o) for o in row.pop("_overrides")) for row in rows]
    keys = swept_keys(root, _sweeper_params(root, list(dirs.values()))) or []
    for key in dict.fromkeys(k for v in values for k in v):
        varies = len({v.get(key) for v in values}) > 1
        if key not in keys and is_swept_candidate(key) and varies:
            keys.append(key)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for position, key in enumerate(keys, start=1):
        column = pd.Series([_parse_value(v.get(key, "")) for v in values], dtype=object)
        try:
            column = pd.to_numeric(column)
        except (ValueError, TypeError):
            column = column.map(lambda x: "" if x is None else str(x))
        frame.insert(position, key, column)
    frame["job"] = frame["job"].astype(int)
    for column in TEXT_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    if write:
        frame.to_csv(root / SUMMARY_CSV, index=False)
        markdown = to_markdown(frame, swept=keys) + "\n\n" + count_line(frame) + "\n"
        (root / SUMMARY_MD).write_text(markdown)
    return frame


def load_summary(path: str | Path) -> pd.DataFrame:
    """A sweep's summary table, read back from its ``summary.csv`` or built from its directory.

    Args:
        path: a ``summary.csv``, or a multirun directory (its ``summary.csv`` when it has one,
            else :func:`summarize` builds and writes it).

    Returns:
        The table :func:`summarize` returns, text columns as strings (empty, not NaN).

    Raises:
        FileNotFoundError: ``path`` is neither a summary file nor a directory.
        pandas.errors.ParserError: the file is not CSV.

    Example:
        >>> frame = load_summary("multirun/train/2025-01-01/12-00-00")  # doctest: +SKIP
        >>> frame.sort_values("best_val_top1", ascending=False).head()  # doctest: +SKIP
    """
    import pandas as pd

    path = Path(path)
    csv_path = path if path.suffix == ".csv" else path / SUMMARY_CSV
    if not csv_path.is_file():
        return summarize(path)
    frame = pd.read_csv(csv_path)
    for column in TEXT_COLUMNS:
        if column in frame:
            frame[column] = frame[column].fillna("").astype(str)
    return frame


def counts(frame: pd.DataFrame) -> dict[str, int]:
    """Jobs per status, every status of :data:`~involution.runs.records.STATUSES` present."""
    return {status: int((frame["status"] == status).sum()) for status in STATUSES}


def has_failures(frame: pd.DataFrame) -> bool:
    """Whether a job failed, diverged or was preempted (a sweep's exit status 1)."""
    n = counts(frame)
    return any(n[status] for status in NOT_OK)


def count_line(frame: pd.DataFrame) -> str:
    """``"14 ok, 2 failed"`` (+ diverged / preempted / running / missing when there are any)."""
    n = counts(frame)
    extra = [f"{n[s]} {s}" for s in ("running", "missing") if n[s]]
    stopped = [f"{n[s]} {s}" for s in ("diverged", "preempted") if n[s]]
    return ", ".join([f"{n['ok']} ok", f"{n['failed']} failed", *stopped, *extra])


def fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, int | float):
        return f"{value * scale:.{digits}f}"
    return str(value)


def swept_cell(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def sweep_task(frame: pd.DataFrame) -> tuple[Task, str | None]:
    """The task of a sweep's table and the metric its jobs are judged by (the most common
    ``optimized_metric`` of its jobs; classification's top-1 when none is known)."""
    named = [m for m in frame.get("optimized_metric", []) if isinstance(m, str) and m]
    metric = max(set(named), key=named.count) if named else None
    return task_of(metric), metric


def metric_headers(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, header) of the metric columns a person reads in this sweep's table: the task's
    validation metrics at the best epoch (the judged one first), then its test metrics; columns
    no job has a value for are left out, bar the judged metric's."""
    task, metric = sweep_task(frame)
    ordered = judged_first(task, metric)
    columns = [(f"best_val_{m.column}", f"val {m.label} %") for m in ordered]
    columns += [(f"test_{m.column}", f"test {m.label} %") for m in ordered if m.test]
    keep = {columns[0][0], f"test_{ordered[0].column}"}
    return [
        (column, header)
        for column, header in columns
        if column in frame and (column in keep or frame[column].notna().any())
    ]


def to_markdown(frame: pd.DataFrame, swept: Sequence[str] | None = None) -> str:
    """The table for people: the task's metrics in %, params in M, multiply-adds in M, time in s."""
    if swept is None:
        swept = [c for c in frame.columns if c not in COLUMNS]
    metrics = metric_headers(frame)
    head = [
        "job", *swept, "status", *(header for _, header in metrics), "params (M)", "MACs (M)",
        "time (s)", "error",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in frame.to_dict("records"):
        cells = [
            str(row["job"]), *(swept_cell(row[k]) for k in swept), row["status"],
            *(fmt(row[column], 100) for column, _ in metrics), fmt(row["params"], 1e-6, 3),
            fmt(row["macs"], 1e-6, 1), fmt(row["wall_time_s"], 1, 0),
            str(row["error"]).replace("|", "\\|"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(frame: pd.DataFrame, root: Path) -> str:
    """What a finished summary prints: the table, where it was written, how to look at it, and
    the count line last."""
    return (
        f"{to_markdown(frame)}\n\nsummary: {root / SUMMARY_CSV} (and {SUMMARY_MD})\n"
        f"charts: make dashboard DIR={root}   (PNG files and an HTML page in it; W&B when "
        f"logged in)\n{count_line(frame)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m involution.runs summarize [DIR] [--finished]``: exit status 0 when every job is
    ok, 1 when one failed, diverged or was preempted, 2 when there is no multirun to summarize."""
    parser = argparse.ArgumentParser(
        prog="python -m involution.runs summarize",
        description="(re)build summary.csv and summary.md of a multirun directory",
    )
    parser.add_argument(
        "dir", nargs="?", help="the multirun directory (default: the latest under ./multirun)"
    )
    parser.add_argument(
        "--finished", action="store_true",
        help="the sweep is over: running and missing jobs count as failed",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        root = Path(args.dir) if args.dir else latest_multirun()
        frame = summarize(root, finished=args.finished)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report(frame, root))
    return 1 if has_failures(frame) else 0
