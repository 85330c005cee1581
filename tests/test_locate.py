"""involution.runs.locate: which directories are multiruns, and which one started last."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from involution.runs import locate
from involution.runs.summary import summarize


def basic_sweep(path: Path, started: float) -> Path:
    """A basic-sweeper multirun: multirun.yaml written at ``started``, one job."""
    (path / "0" / ".hydra").mkdir(parents=True)
    (path / "0" / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    (path / "multirun.yaml").write_text("{}\n")
    os.utime(path / "multirun.yaml", (started, started))
    os.utime(path / "0" / ".hydra" / "overrides.yaml", (started, started))
    return path


def optuna_sweep(path: Path, started: float) -> Path:
    """An Optuna multirun: no multirun.yaml, job folders whose .hydra files date its start."""
    for job in ("0", "1"):
        (path / job / ".hydra").mkdir(parents=True)
        (path / job / ".hydra" / "config.yaml").write_text("{}\n")
        stamp = started + int(job) * 10
        os.utime(path / job / ".hydra" / "config.yaml", (stamp, stamp))
    return path


def test_latest_multirun_is_the_last_started(tmp_path: Path) -> None:
    base = tmp_path / "multirun"
    old = basic_sweep(base / "train" / "2030-01-01" / "00-00-00", 1000)
    search = optuna_sweep(base / "search" / "2030-01-02" / "00-00-00", 2000)
    new = basic_sweep(base / "train" / "2030-01-03" / "00-00-00", 3000)
    assert locate.latest_multirun(base) == new
    (new / "multirun.yaml").unlink()  # then the jobs date it: 3000, still the newest
    assert locate.latest_multirun(base) == new
    new.joinpath("0", ".hydra", "overrides.yaml").unlink()  # no longer a multirun
    assert locate.latest_multirun(base) == search  # found without a multirun.yaml
    # summarizing an old sweep writes into its directory; it does not become the newest
    summarize(old)
    assert (old / "summary.csv").is_file() and locate.latest_multirun(base) == search


def test_no_multirun_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no multirun found under"):
        locate.latest_multirun(tmp_path / "nothing")
    (tmp_path / "plain" / "0").mkdir(parents=True)  # a numbered folder without .hydra/
    with pytest.raises(FileNotFoundError):
        locate.latest_multirun(tmp_path)


def test_latest_multirun_defaults_to_the_project_roots_multirun(
    tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    sweep = basic_sweep(tmp_path / "multirun" / "train" / "a", 1000)
    monkeypatch.chdir(tmp_path / "notebooks")
    assert locate.project_root() == tmp_path.resolve()
    assert locate.latest_multirun().resolve() == sweep.resolve()


def test_is_multirun(tmp_path: Path) -> None:
    sweep = basic_sweep(tmp_path / "basic", 1000)
    assert locate.is_multirun(sweep) and locate.is_multirun(optuna_sweep(tmp_path / "optuna", 0))
    assert not locate.is_multirun(sweep / "0")  # a job is not a multirun
    # a date folder of single runs (not numbered) is not one either
    (tmp_path / "day" / "12-00-00" / ".hydra").mkdir(parents=True)
    (tmp_path / "day" / "12-00-00" / ".hydra" / "config.yaml").write_text("{}\n")
    assert not locate.is_multirun(tmp_path / "day")
    assert not locate.is_multirun(tmp_path / "missing")
