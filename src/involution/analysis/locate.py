"""Where things are: the project root, the newest multirun, the newest checkpoint of an operator."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from involution.analysis.errors import CheckpointError, NotAMultirunError

PathLike = str | os.PathLike


def project_root(start: PathLike | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: the working directory) holding
    ``pyproject.toml``: Jupyter starts kernels in ``notebooks/``, runs write under the root."""
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return here


def figure_dir(figdir: PathLike | None, notebook: str) -> Path:
    """``figdir`` if given, else ``<project root>/outputs/figures/<notebook>``; created."""
    path = Path(figdir) if figdir else project_root() / "outputs" / "figures" / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_multirun(path: PathLike) -> bool:
    """A Hydra multirun directory: ``multirun.yaml`` at the top, or job folders holding ``.hydra/``."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "multirun.yaml").is_file():
        return True
    return any((job / ".hydra" / "config.yaml").is_file() for job in path.iterdir() if job.is_dir())


def latest_multirun(root: PathLike | None = None) -> Path:
    """The most recently written multirun directory under ``<root>/multirun`` (Hydra's default)."""
    base = Path(root) if root else project_root() / "multirun"
    found = [p.parent for p in base.rglob("multirun.yaml")] if base.is_dir() else []
    if not found:
        raise NotAMultirunError(
            f"no multirun found under {base}: run a sweep first (e.g. make train "
            "ARGS='--multirun operator.kernel_size=3,5,7') or set MULTIRUN to its directory"
        )
    return max(found, key=lambda p: (p / "multirun.yaml").stat().st_mtime)


def run_operator(run_dir: PathLike) -> str | None:
    """``operator.name`` from a run directory's ``.hydra/config.yaml`` (None when unreadable)."""
    try:
        config = yaml.safe_load((Path(run_dir) / ".hydra" / "config.yaml").read_text())
        return str(config["operator"]["name"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def find_checkpoint(operator: str, roots: list[PathLike] | None = None) -> Path:
    """The newest ``checkpoints/best-*.ckpt`` (else ``last.ckpt``) of a run with this operator,
    searched under ``outputs/`` and ``multirun/`` of the project root (or ``roots``)."""
    root = project_root()
    bases = [Path(r) for r in roots] if roots else [root / "outputs", root / "multirun"]
    candidates: list[Path] = []
    for base in bases:
        if not base.is_dir():
            continue
        for folder in base.rglob("checkpoints"):
            if run_operator(folder.parent) != operator:
                continue
            best = sorted(folder.glob("best-*.ckpt")) or sorted(folder.glob("last.ckpt"))
            candidates.extend(best[-1:])
    if not candidates:
        where = " and ".join(str(b) for b in bases)
        raise CheckpointError(
            f"no checkpoint of a run with operator={operator} found under {where}: train one (e.g. make train "
            f"ARGS='operator={operator}') or set the checkpoint path in the first cell"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)
