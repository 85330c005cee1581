"""Where things are: figures, the newest multirun, the best finished single run of an operator.

Multirun directories and the project root follow :mod:`involution.runs.locate`.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from involution.analysis.errors import CheckpointError, NotAMultirunError
from involution.runs import locate as runs_locate
from involution.runs.locate import is_multirun, project_root
from involution.runs.records import read_record

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


def _best_score(run_dir: Path) -> tuple[bool, float]:
    """(finished, best val top-1) of a run from its ``job.json`` ((False, -inf) without one)."""
    record = read_record(run_dir) or {}
    score = (record.get("metrics") or {}).get("best/val/acc_top1")
    finite = isinstance(score, int | float) and score == score
    return record.get("status") == "ok", float(score) if finite else float("-inf")


def _sweep_job(run_dir: Path) -> bool:
    """Whether a run directory is a job of a multirun (its record says so, or its parent is one)."""
    record = read_record(run_dir) or {}
    return record.get("job") is not None or is_multirun(run_dir.parent)


def find_checkpoint(operator: str, roots: list[PathLike] | None = None) -> Path:
    """The best checkpoint (``checkpoints/best-*.ckpt``, else ``last.ckpt``) of the best finished
    run with this operator: by default the single runs under ``outputs/`` of the project root,
    never a sweep job (a short sweep's job is no model to look at); under ``roots``, when given,
    any run there, sweep jobs included (the caller chose the folder). Runs are ranked finished
    first, then by their best val top-1 (``job.json``), then the newest."""
    root = project_root()
    bases = [Path(r) for r in roots] if roots else [root / "outputs"]
    candidates: list[tuple[tuple[bool, float, float], Path]] = []
    for base in bases:
        if not base.is_dir():
            continue
        for folder in base.rglob("checkpoints"):
            run_dir = folder.parent
            if run_operator(run_dir) != operator or (roots is None and _sweep_job(run_dir)):
                continue
            best = sorted(folder.glob("best-*.ckpt")) or sorted(folder.glob("last.ckpt"))
            if best:
                path = best[-1]
                candidates.append(((*_best_score(run_dir), path.stat().st_mtime), path))
    if not candidates:
        where = " and ".join(str(b) for b in bases)
        kind = "run" if roots else "single run (sweep jobs are not taken)"
        raise CheckpointError(
            f"no checkpoint of a {kind} with operator={operator} found under {where}: "
            "train one (e.g. make train "
            f"ARGS='operator={operator}') or set the checkpoint path in the first cell"
        )
    return max(candidates, key=lambda pair: pair[0])[1]
