"""Job records: every run writes its outcome to ``<run dir>/job.json`` (one schema, one writer).

A record starts as ``status: running`` and ends as one of :data:`STATUSES`; the multirun summary
(:mod:`involution.runs.summary`), ``resume=latest`` (:mod:`involution.runner.resume`) and the
notebooks read it back with :func:`read_record`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

RECORD = "job.json"
# ok: finished; failed: an error (job.json says which); diverged: NaN/Inf loss or weights;
# preempted: stopped by SIGTERM/SIGUSR1 after a checkpoint (resume=auto continues it);
# running: started, no outcome yet; missing: a job of the sweep without a record (summary only).
STATUSES = ("ok", "failed", "diverged", "preempted", "running", "missing")
# Statuses of a job that did not finish its work: a sweep holding one has failed.
NOT_OK = ("failed", "diverged", "preempted")


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one line for records, tables and notebooks.

    Args:
        error: the exception.
        limit: the most characters returned (longer lines end with ``...``).

    Returns:
        ``"Type: first non-empty line of the message"`` (the type alone for an empty message).

    Example:
        >>> one_line(ValueError("bad size\\nmore detail"))
        'ValueError: bad size'
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_yaml(path: str | Path) -> Any:
    """A YAML file Hydra wrote (``multirun.yaml``, ``.hydra/*.yaml``) as plain containers,
    unresolved; None when it is not there (a job that has not started, another host's disk)."""
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (FileNotFoundError, OSError):
        return None


def read_record(job_dir: str | Path) -> dict[str, Any] | None:
    """The ``job.json`` of a run directory; None when it has none or it is not JSON."""
    try:
        return json.loads((Path(job_dir) / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic: readers (a summary of a running sweep) never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def process_alive(record: Mapping[str, Any]) -> bool:
    """Whether the process a job.json names still runs (False for another host: unknown there)."""
    pid = int(record.get("pid", 0) or 0)
    return pid > 0 and record.get("host") == socket.gethostname() and _pid_alive(pid)


class NonFiniteMetrics(RuntimeError):
    """Training diverged: a final metric is NaN or infinite."""


def check_finite(metrics: Mapping[str, float]) -> None:
    """Raise :class:`NonFiniteMetrics` naming every NaN or infinite value of ``metrics``."""
    bad = {key: value for key, value in metrics.items() if not math.isfinite(value)}
    if bad:
        found = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
        raise NonFiniteMetrics(f"non-finite metrics: {found}")


class JobRecorder:
    """Writes ``job.json``: ``status: running`` at the start, then ``ok``, ``failed``, ``diverged``
    or ``preempted`` with the error.

    Fields: status, error, job, overrides, run_dir, name, group, host, pid, started, finished,
    wall_time_s (the whole job: setup, fit and test), params, macs, metrics (``train()``'s dict),
    checkpoint (the last checkpoint, for diverged and preempted runs), optimized_metric (the metric
    the run is judged by: the summary shows its task's metrics), resumes (how many times the run
    directory has been continued; the previous records' start times are in ``history``).
    Only rank 0 writes (DDP ranks > 0 and SLURM tasks > 0 hold no recorder file).
    """

    def __init__(
        self,
        run_dir: str | Path,
        job: int | None,
        overrides: Sequence[str],
        identity: Mapping[str, Any],
        rank: int = 0,
        optimized_metric: str | None = None,
    ) -> None:
        self.path = Path(run_dir) / RECORD if rank == 0 else None
        self.started = time.perf_counter()
        self.record: dict[str, Any] = {
            "status": "running", "error": "", "job": job, "overrides": list(overrides),
            "run_dir": str(Path(run_dir).resolve()), "name": identity.get("name", ""),
            "group": identity.get("group", ""), "host": socket.gethostname(), "pid": os.getpid(),
            "started": _now(), "finished": None, "wall_time_s": None,
            "params": None, "macs": None, "metrics": {}, "checkpoint": None,
            "optimized_metric": optimized_metric,
        }  # fmt: skip
        previous = read_record(run_dir) if rank == 0 else None
        if previous is not None:  # the same run directory continued (resume=auto, a requeue)
            self.record["resumes"] = int(previous.get("resumes", 0)) + 1
            kept = ("status", "error", "started", "finished", "pid")
            self.record["history"] = [
                *previous.get("history", []),
                {key: previous.get(key) for key in kept},
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
        )  # fmt: skip
        self._write()

    def ok(self, metrics: Mapping[str, float]) -> None:
        """The run finished: ``status: ok`` with its final metrics."""
        self._finish("ok", "", metrics)

    def failed(
        self,
        error: BaseException,
        metrics: Mapping[str, float] | None = None,
        status: str = "failed",
    ) -> str:
        """The run stopped on ``error``: recorded as one line (returned) under ``status``."""
        message = one_line(error)
        self._finish(status, message, metrics or {})
        return message

    def stopped(self, status: str, error: BaseException, checkpoint: str | Path | None) -> str:
        """``diverged`` or ``preempted``, with the checkpoint the run can continue from."""
        self.record["checkpoint"] = str(checkpoint) if checkpoint else None
        return self.failed(error, status=status)
