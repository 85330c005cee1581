"""Where things are: figures, the newest multirun, the newest checkpoint of an operator.

Multirun directories and the project root follow :mod:`involution.runs.locate`.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from involution.analysis.errors import CheckpointError, NotAMultirunError
from involution.runs import locate as runs_locate
from involution.runs.locate import is_multirun, project_root

PathLike = str | os.PathLike

__all__ = [
    "figure_dir",
    "find_checkpoint",
    "is_multirun",
    "latest_multirun",
    "project_root",
    "run_operator",
]


def figure_dir(figdir: PathLike | None, notebook: str) -> Path:
    """``figdir`` if given, else ``<project root>/outputs/figures/<notebook>``; created."""
    path = Path(figdir) if figdir else project_root() / "outputs" / "figures" / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def latest_multirun(root: PathLike | None = None) -> Path:
    """The most recently started multirun directory under ``root`` (default
    ``<project root>/multirun``), by the rules of :mod:`involution.runs.locate`; a one-line
    ``NotAMultirunError`` when there is none."""
    try:
        return runs_locate.latest_multirun(root)
    except FileNotFoundError as error:
        raise NotAMultirunError(f"{error} (in a notebook: set MULTIRUN to it)") from None


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
            f"no checkpoint of a run with operator={operator} found under {where}: "
            "train one (e.g. make train "
            f"ARGS='operator={operator}') or set the checkpoint path in the first cell"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)
