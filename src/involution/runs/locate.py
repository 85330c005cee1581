"""Where runs are: the project root and the multirun directories under it (one set of rules).

A multirun directory holds ``multirun.yaml`` (Hydra's basic sweeper writes it when the sweep
starts) or numbered job folders with ``.hydra/`` (every launcher writes those when a job starts;
the Optuna sweeper writes no multirun.yaml). It started when the first of those files was
written: a directory's own modification time is not used, since it moves whenever an entry is
added (writing ``summary.csv`` into an old sweep would make it the newest).
"""

from __future__ import annotations

import os
from pathlib import Path

PathLike = str | os.PathLike
# Files Hydra writes once, when a job starts.
_JOB_FILES = ("overrides.yaml", "config.yaml")


def project_root(start: PathLike | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: the working directory) holding
    ``pyproject.toml``, else ``start`` itself: Jupyter starts kernels in ``notebooks/``, runs
    write under the root."""
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return here


def _job_files(path: Path) -> list[Path]:
    """The start files of the numbered job folders directly under ``path``."""
    if not path.is_dir():
        return []
    jobs = [job for job in path.iterdir() if job.is_dir() and job.name.isdigit()]
    return [job / ".hydra" / name for job in jobs for name in _JOB_FILES
            if (job / ".hydra" / name).is_file()]  # fmt: skip


def is_multirun(path: PathLike) -> bool:
    """Whether ``path`` is a Hydra multirun directory (see the module's rules)."""
    path = Path(path)
    return path.is_dir() and ((path / "multirun.yaml").is_file() or bool(_job_files(path)))


def started(multirun_dir: PathLike) -> float:
    """When a multirun started (seconds since the epoch): its multirun.yaml's modification time,
    else its earliest job start file's."""
    path = Path(multirun_dir)
    master = path / "multirun.yaml"
    if master.is_file():
        return master.stat().st_mtime
    return min(p.stat().st_mtime for p in _job_files(path))


def latest_multirun(base: PathLike | None = None) -> Path:
    """The most recently started multirun directory under ``base``.

    Args:
        base: where to look, at any depth (default: ``<project root>/multirun``, Hydra's
            ``multirun/<task>/<date>/<time>``).

    Returns:
        The multirun directory.

    Raises:
        FileNotFoundError: no multirun directory under ``base``.

    Example:
        >>> latest_multirun()  # doctest: +SKIP
        PosixPath('/home/me/involution/multirun/train/2025-01-01/12-00-00')
    """
    root = Path(base) if base is not None else project_root() / "multirun"
    found: set[Path] = set()
    if root.is_dir():
        found |= {p.parent for p in root.rglob("multirun.yaml")}
        found |= {p.parent.parent for p in root.rglob(".hydra") if p.parent.name.isdigit()}
    found = {path for path in found if is_multirun(path)}
    if not found:
        raise FileNotFoundError(
            f"no multirun found under {root}: run a sweep first (e.g. make sweep) "
            "or give its directory"
        )
    return max(found, key=started)
