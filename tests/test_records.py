"""involution.runs.records: job.json written and read back, the one-line error text, NaN checks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from involution.runs import records


def test_job_recorder_and_nan_check(tmp_path: Path) -> None:
    recorder = records.JobRecorder(tmp_path, 7, ["a=1"], {"name": "n", "group": "g"})
    assert records.read_record(tmp_path)["status"] == "running"
    with pytest.raises(records.NonFiniteMetrics, match="train/loss=nan") as error:
        records.check_finite({"val/acc_top1": 0.1, "train/loss": float("nan")})
    recorder.failed(error.value)
    record = records.read_record(tmp_path)
    assert record["status"] == "failed" and record["error"].startswith(
        "NonFiniteMetrics: non-finite"
    )
    assert record["job"] == 7 and record["wall_time_s"] >= 0
    records.JobRecorder(tmp_path / "rank1", 0, [], {}, rank=1)
    assert not (tmp_path / "rank1").exists()


def test_a_continued_run_keeps_its_earlier_records(tmp_path: Path) -> None:
    records.JobRecorder(tmp_path, 0, [], {}).stopped("preempted", KeyboardInterrupt(), "last.ckpt")
    records.JobRecorder(tmp_path, 0, [], {}).ok({"params": 10.0, "macs": 20.0})
    record = records.read_record(tmp_path)
    assert record["status"] == "ok" and record["resumes"] == 1
    assert record["params"] == 10.0 and record["macs"] == 20.0
    assert [entry["status"] for entry in record["history"]] == ["preempted"]
    assert records.read_record(tmp_path / "nowhere") is None


def test_one_line_is_the_type_and_the_first_non_empty_line() -> None:
    assert records.one_line(ValueError("\n  bad size  \nmore")) == "ValueError: bad size"
    assert records.one_line(KeyError()) == "KeyError"
    long = records.one_line(RuntimeError("x" * 500), limit=40)
    assert len(long) == 40 and long.endswith("...") and long.startswith("RuntimeError: x")


def test_process_alive_only_for_a_live_process_on_this_host() -> None:
    here = socket.gethostname()
    assert records.process_alive({"pid": os.getpid(), "host": here})
    assert not records.process_alive({"pid": os.getpid(), "host": f"not-{here}"})
    assert not records.process_alive({"pid": 2**22 + 12345, "host": here})
    assert not records.process_alive({})
