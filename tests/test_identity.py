"""involution.runs.identity: a sweep's jobs share one W&B group, each named by its swept values."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from involution.runs.identity import run_identity, sweep_time

WANDB = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"


def wandb_run(job_dir: Path) -> dict:
    """The run record of a job's offline W&B run, read with W&B's own reader."""
    logs = list((job_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, logs
    command = [WANDB, "leet", "inspect", "--json", str(logs[0])]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return next(r["run"] for r in lines if r["type"] == "run")


def test_run_identity_in_a_sweep_and_alone() -> None:
    operator = {
        "name": "involution", "kernel_size": 3, "group_channels": 16, "reduction_ratio": 8,
        "dilation": 1, "backend": "auto",
    }  # fmt: skip
    alone = run_identity(operator, "train", "digits")
    assert alone["name"] == "involution-d1-gc16-k3-r8" and alone["group"] == "train-digits"
    sweep = {
        "name": "kernel_reduction", "time": "2030-01-02_03-04-05",
        "overrides": [("operator.kernel_size", "3"), ("module.lr", "0.2")],
    }  # fmt: skip
    swept = run_identity(operator, "train", "digits", sweep)
    assert swept["group"] == "kernel_reduction-2030-01-02_03-04-05"
    assert swept["name"] == "involution-k3-lr0.2" and "sweep=kernel_reduction" in swept["tags"]
    only_operator = run_identity(
        operator, "train", "digits", {**sweep, "overrides": [("operator", "involution")]}
    )
    assert only_operator["name"] == alone["name"]
    assert sweep_time("multirun/train/2030-01-02/03-04-05") == "2030-01-02_03-04-05"


def test_sweep_jobs_are_wandb_runs_in_one_group(kernel_sweep) -> None:
    _, sweep_dir = kernel_sweep
    runs = [wandb_run(sweep_dir / str(job)) for job in range(4)]
    assert {run["run_group"] for run in runs} == {"kernel_reduction-2030-01-02_03-04-05"}
    names = ["involution-k3-r2", "involution-k3-r4", "involution-k5-r2", "involution-k5-r4"]
    assert [run["display_name"] for run in runs] == names
    for run in runs:
        assert {"involution", "sweep=kernel_reduction"} <= set(run["tags"])
        assert any(tag.startswith("kernel_size=") for tag in run["tags"])
