"""Sweeps: each job's outcome record, the W&B identity of a sweep, and the summary table of a multirun.

A multirun (``python -m involution.train sweep=kernel_reduction``, ``make sweep``) writes
``multirun/<task>/<date>/<time>/<job num>/`` per job; every job (every run, in fact) records its
outcome in ``<job dir>/job.json`` (see :class:`JobRecorder`). :func:`summarize` turns a multirun
directory, finished or not, into one table (``summary.csv`` + ``summary.md``, one row per job)::

    python -m involution.sweeps summarize multirun/train/2025-01-01/12-00-00
    python -m involution.sweeps summarize          # the latest multirun under ./multirun

:class:`SummaryCallback` (a Hydra callback, set in ``conf/sweep/*`` and ``conf/hparams_search/*``)
does the same when a sweep ends, prints the table and ``N ok, M failed``, and exits with status 1
when a job failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

if TYPE_CHECKING:
    import pandas as pd

RECORD = "job.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
# ok: finished; failed: an error (job.json says which); diverged: NaN/Inf loss or weights;
# preempted: stopped by SIGTERM/SIGUSR1 after a checkpoint (resume=auto continues it).
STATUSES = ("ok", "failed", "diverged", "preempted", "running", "missing")
# The summary's fixed columns (the swept keys come after ``job``, one column each, named as the key).
COLUMNS = (
    "job", "status", "best_val_top1", "best_val_top5", "test_top1", "val_top1", "epochs",
    "params", "macs", "wall_time_s", "error", "overrides", "name", "group", "run_dir",
)
TEXT_COLUMNS = ("status", "error", "overrides", "name", "group", "run_dir")
# The W&B job type of the run that holds a sweep's own charts and table (involution.dashboard);
# readers of a sweep's runs leave it out.
SUMMARY_JOB_TYPE = "sweep-summary"
# Overrides that choose what to sweep rather than being swept.
_NOT_SWEPT = ("sweep", "hparams_search")


# ---------------------------------------------------------------------------------------------
# The sweep a job belongs to (W&B group and name)


def split_override(override: str) -> tuple[str, str]:
    """``"+a.b=1"`` -> ``("a.b", "1")``; a deletion ``"~a"`` -> ``("a", "")``."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def sweep_time(sweep_dir: str) -> str:
    """The sweep's start time from its directory (``.../2025-01-01/12-00-00`` -> ``2025-01-01_12-00-00``)."""
    found = re.search(r"(\d{4}-\d{2}-\d{2})\D+(\d{2}-\d{2}-\d{2})", str(sweep_dir))
    return f"{found.group(1)}_{found.group(2)}" if found else Path(str(sweep_dir)).name


def swept_keys(sweep_dir: str | Path, params: Sequence[str] = ()) -> list[str] | None:
    """The keys a sweep varies: those of ``hydra.sweeper.params`` (sweep and Optuna configs) and the
    command line's sweep overrides (``a=1,2``, from the sweep's multirun.yaml); None when neither
    source is there (a job whose sweep directory is not readable from where it runs)."""
    keys = list(params)
    master = _load_yaml(Path(sweep_dir) / "multirun.yaml")
    if isinstance(master, dict):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        task = master.get("hydra", {}).get("overrides", {}).get("task") or []
        try:
            parsed = OverridesParser.create().parse_overrides(list(task))
        except Exception:
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
    return [(key, value) for key, value in pairs if key not in _NOT_SWEPT and not key.startswith("hydra")]


def sweep_context(cfg: DictConfig) -> dict[str, Any] | None:
    """In a multirun job: the sweep's name and start time and this job's swept overrides; else None.

    The name is ``sweep.name`` (``conf/sweep/*``), ``hparams_search.name`` (``conf/hparams_search/*``)
    or ``multirun`` for a sweep given on the command line only.
    """
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    name = OmegaConf.select(cfg, "sweep.name") or OmegaConf.select(cfg, "hparams_search.name") or "multirun"
    return {
        "name": str(name),
        "time": sweep_time(hydra_cfg.sweep.dir),
        "job": int(hydra_cfg.job.num),
        "overrides": swept_overrides(hydra_cfg),
    }


@contextmanager
def ddp_children_run_this_job() -> Iterator[None]:
    """Let Lightning's DDP launcher start this multirun job's other ranks, not the whole sweep again.

    Lightning starts ranks > 0 by re-running ``sys.argv`` plus ``hydra.run.dir=<HydraConfig run.dir>``;
    in a multirun job that command is the sweep. For the job's duration the command becomes this
    job's overrides as a single run, in the job's own directory. Works for jobs that run in the
    launching process (Hydra's basic launcher); on SLURM the ranks are started by srun instead.
    """
    hydra_cfg = HydraConfig.get()
    argv, run_dir = sys.argv, hydra_cfg.run.dir
    sys.argv = [argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = run_dir


# ---------------------------------------------------------------------------------------------
# Job records: <job dir>/job.json


def one_line(error: BaseException, limit: int = 300) -> str:
    """``"Type: first line of the message"``, at most ``limit`` characters."""
    text = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic: readers (a summary of a running sweep) never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_record(job_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(job_dir) / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class NonFiniteMetrics(RuntimeError):
    """Training diverged: a final metric is NaN or infinite."""


def check_finite(metrics: Mapping[str, float]) -> None:
    bad = {key: value for key, value in metrics.items() if not math.isfinite(value)}
    if bad:
        raise NonFiniteMetrics("non-finite metrics: " + ", ".join(f"{k}={v}" for k, v in sorted(bad.items())))


class JobRecorder:
    """Writes ``job.json``: ``status: running`` at the start, then ``ok``, ``failed``, ``diverged`` or
    ``preempted`` with the error.

    Fields: status, error, job, overrides, run_dir, name, group, host, pid, started, finished,
    wall_time_s (the whole job: setup, fit and test), params, macs, metrics (``train()``'s dict),
    checkpoint (the last checkpoint, for diverged and preempted runs), resumes (how many times the
    run directory has been continued; the previous records' start times are in ``history``).
    Only rank 0 writes (DDP ranks > 0 and SLURM tasks > 0 hold no recorder file).
    """

    def __init__(self, run_dir: str | Path, job: int | None, overrides: Sequence[str], identity: Mapping[str, Any], rank: int = 0) -> None:
        self.path = Path(run_dir) / RECORD if rank == 0 else None
        self.started = time.perf_counter()
        self.record: dict[str, Any] = {
            "status": "running", "error": "", "job": job, "overrides": list(overrides),
            "run_dir": str(Path(run_dir).resolve()), "name": identity.get("name", ""),
            "group": identity.get("group", ""), "host": socket.gethostname(), "pid": os.getpid(),
            "started": _now(), "finished": None, "wall_time_s": None,
            "params": None, "macs": None, "metrics": {}, "checkpoint": None,
        }
        previous = read_record(run_dir) if rank == 0 else None
        if previous is not None:  # the same run directory continued (resume=auto, a requeue)
            self.record["resumes"] = int(previous.get("resumes", 0)) + 1
            self.record["history"] = [
                *previous.get("history", []),
                {key: previous.get(key) for key in ("status", "error", "started", "finished", "pid")},
            ]
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write_json(self.path, self.record)

    def _finish(self, status: str, error: str, metrics: Mapping[str, float]) -> None:
        self.record.update(
            status=status, error=error, finished=_now(), metrics=dict(metrics),
            wall_time_s=round(time.perf_counter() - self.started, 3),
            params=metrics.get("params"), macs=metrics.get("macs"),
        )
        self._write()

    def ok(self, metrics: Mapping[str, float]) -> None:
        self._finish("ok", "", metrics)

    def failed(self, error: BaseException, metrics: Mapping[str, float] | None = None, status: str = "failed") -> str:
        message = one_line(error)
        self._finish(status, message, metrics or {})
        return message

    def stopped(self, status: str, error: BaseException, checkpoint: str | Path | None) -> str:
        """``diverged`` or ``preempted``, with the checkpoint the run can continue from."""
        self.record["checkpoint"] = str(checkpoint) if checkpoint else None
        return self.failed(error, status=status)


# ---------------------------------------------------------------------------------------------
# The summary table


def _load_yaml(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (FileNotFoundError, OSError):
        return None


def expected_jobs(multirun_dir: Path) -> dict[int, list[str]]:
    """Job number -> overrides of every job a basic-sweeper multirun will run (from multirun.yaml),
    so that jobs not started yet show up as ``missing``. Empty for other sweepers (Optuna)."""
    master = _load_yaml(multirun_dir / "multirun.yaml")
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
        data = _load_yaml(path)
        if isinstance(data, dict):
            return list(data.get("hydra", {}).get("sweeper", {}).get("params") or {})
    return []


def best_epoch(job_dir: Path) -> dict[str, float]:
    """From ``csv/metrics.csv``: best val top-1, the val top-5 of that epoch, the last val top-1 and
    the number of validated epochs (works while the job still runs)."""
    path = job_dir / "csv" / "metrics.csv"
    try:
        with path.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("val/acc_top1")]
    except (FileNotFoundError, OSError, csv.Error):
        return {}
    if not rows:
        return {}
    best = max(rows, key=lambda r: float(r["val/acc_top1"]))
    out = {"best_val_top1": float(best["val/acc_top1"]), "val_top1": float(rows[-1]["val/acc_top1"]), "epochs": float(len(rows))}
    if best.get("val/acc_top5"):
        out["best_val_top5"] = float(best["val/acc_top5"])
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_alive(record: Mapping[str, Any]) -> bool:
    """Whether the process a job.json names still runs (False for another host: unknown there)."""
    pid = int(record.get("pid", 0) or 0)
    return pid > 0 and record.get("host") == socket.gethostname() and _pid_alive(pid)


def job_row(num: int, job_dir: Path, expected: list[str] | None, finished: bool) -> dict[str, Any]:
    record = read_record(job_dir) if job_dir.is_dir() else None
    overrides = (record or {}).get("overrides")
    if overrides is None:
        overrides = _load_yaml(job_dir / ".hydra" / "overrides.yaml") or expected or []
    row: dict[str, Any] = {key: math.nan for key in COLUMNS}
    row.update(job=num, error="", overrides=" ".join(overrides), name="", group="", run_dir=str(job_dir))
    row["_overrides"] = overrides
    if record is None:
        row["status"] = "missing"
        if finished:
            row.update(status="failed", error="no result recorded: the job did not run or was killed")
    else:
        metrics = record.get("metrics") or {}
        row.update(
            status=record.get("status", "missing"), error=record.get("error") or "",
            name=record.get("name") or "", group=record.get("group") or "",
            params=record.get("params"), macs=record.get("macs"),
            wall_time_s=record.get("wall_time_s"),
            best_val_top1=metrics.get("best/val/acc_top1"), val_top1=metrics.get("val/acc_top1"),
            best_val_top5=metrics.get("val/acc_top5"), test_top1=metrics.get("test/acc_top1"),
        )
        if row["status"] == "running":
            dead = record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", 0)))
            if dead or finished:
                row.update(status="failed", error=f"no result recorded: process {record.get('pid')} on {record.get('host')} ended (killed?)")
    row.update(best_epoch(job_dir))
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


def summarize(multirun_dir: str | Path, *, finished: bool = False, write: bool = True) -> pd.DataFrame:
    """One row per job of a multirun directory, finished or not; writes summary.csv and summary.md.

    Columns: ``job``, then one per swept key (named as the key, e.g. ``operator.kernel_size``,
    numeric where the values are), then :data:`COLUMNS` (accuracies are fractions in [0, 1]; the
    best val top-5 is that of the best val top-1 epoch; ``wall_time_s`` is the whole job's).
    ``status`` is ok / failed / running / missing (not started); with ``finished=True`` (the sweep
    is over) running and missing jobs count as failed.
    """
    import pandas as pd

    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no multirun directory {root}")
    dirs = {int(p.name): p for p in root.iterdir() if p.is_dir() and p.name.isdigit()}
    expected = expected_jobs(root)
    rows = [job_row(n, dirs.get(n, root / str(n)), expected.get(n), finished) for n in sorted(set(dirs) | set(expected))]

    values = [dict(split_override(o) for o in row.pop("_overrides")) for row in rows]
    keys = swept_keys(root, _sweeper_params(root, list(dirs.values()))) or []
    for key in dict.fromkeys(k for v in values for k in v):
        if key not in keys and key not in _NOT_SWEPT and not key.startswith("hydra") and len({v.get(key) for v in values}) > 1:
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
        (root / SUMMARY_MD).write_text(to_markdown(frame, swept=keys) + "\n\n" + count_line(frame) + "\n")
    return frame


def load_summary(path: str | Path) -> pd.DataFrame:
    """Read a summary back: ``path`` is a summary.csv or a multirun directory (rebuilt if it has none)."""
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
    return {status: int((frame["status"] == status).sum()) for status in STATUSES}


def count_line(frame: pd.DataFrame) -> str:
    """``"14 ok, 2 failed"`` (+ running / missing when there are any)."""
    n = counts(frame)
    extra = [f"{n[s]} {s}" for s in ("running", "missing") if n[s]]
    stopped = [f"{n[s]} {s}" for s in ("diverged", "preempted") if n[s]]
    return ", ".join([f"{n['ok']} ok", f"{n['failed']} failed", *stopped, *extra])


def _fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, int | float):
        return f"{value * scale:.{digits}f}"
    return str(value)


def to_markdown(frame: pd.DataFrame, swept: Sequence[str] | None = None) -> str:
    """The table for people: accuracies in %, params in M, multiply-adds in M, time in s."""
    if swept is None:
        swept = [c for c in frame.columns if c not in COLUMNS]
    head = ["job", *swept, "status", "val top-1 %", "val top-5 %", "test top-1 %", "params (M)", "MACs (M)", "time (s)", "error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in frame.to_dict("records"):
        swept_values = ["null" if isinstance(row[k], float) and math.isnan(row[k]) else (str(int(row[k])) if isinstance(row[k], float) and row[k].is_integer() else str(row[k])) for k in swept]
        cells = [
            str(row["job"]), *swept_values, row["status"],
            _fmt(row["best_val_top1"], 100), _fmt(row["best_val_top5"], 100), _fmt(row["test_top1"], 100),
            _fmt(row["params"], 1e-6, 3), _fmt(row["macs"], 1e-6, 1), _fmt(row["wall_time_s"], 1, 0),
            str(row["error"]).replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class SummaryCallback(Callback):
    """Hydra callback: when a multirun ends, write and print its summary and ``N ok, M failed``;
    exit with status 1 when a job failed (``exit_on_failure``)."""

    def __init__(self, exit_on_failure: bool = True) -> None:
        self.exit_on_failure = exit_on_failure

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(str(config.hydra.sweep.dir))
        frame = summarize(root, finished=True)
        print(f"\n{to_markdown(frame)}\n\nsummary: {root / SUMMARY_CSV}\n{count_line(frame)}", flush=True)
        n = counts(frame)
        if self.exit_on_failure and (n["failed"] or n["diverged"] or n["preempted"]):
            raise SystemExit(1)


def latest_multirun(base: str | Path = "multirun") -> Path:
    """The most recently started multirun directory under ``base``."""
    candidates = {p.parents[2] for p in Path(base).glob("**/.hydra/overrides.yaml") if p.parents[1].name.isdigit()}
    candidates |= {p.parent for p in Path(base).glob("**/multirun.yaml")}
    if not candidates:
        raise FileNotFoundError(f"no multirun directory under {base}/")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m involution.sweeps", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summarize", help="(re)build summary.csv and summary.md of a multirun directory")
    summary.add_argument("dir", nargs="?", help="the multirun directory (default: the latest under ./multirun)")
    summary.add_argument("--finished", action="store_true", help="the sweep is over: running and missing jobs count as failed")
    args = parser.parse_args(argv)
    try:
        root = Path(args.dir) if args.dir else latest_multirun()
        frame = summarize(root, finished=args.finished)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{to_markdown(frame)}\n\nsummary: {root / SUMMARY_CSV}\n{count_line(frame)}")
    n = counts(frame)
    return 1 if n["failed"] or n["diverged"] or n["preempted"] else 0


if __name__ == "__main__":
    sys.exit(main())
