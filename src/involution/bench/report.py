"""What every benchmark records next to its figures: machine, versions, load, date; JSON records.

Each benchmark writes its JSON records beside the markdown file it renders
(``docs/benchmarks.<name>.json``) and renders its own section of that file (``bench.sections``)
from those records, so that benchmarks can be rerun (or re-rendered) one at a time without
touching the others. One format for every benchmark::

    {"meta": {"benchmark", "date", "command", "machine", "versions", ...}, "rows": [...], ...}

``read_records`` is the one loader: the benchmarks' ``--render`` modes, ``analysis`` and the
notebooks read the records through it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
from pathlib import Path
from typing import Any

import torch

from involution.bench import sections


def versions() -> dict[str, str]:
    """Python, torch, numba and numba-cuda versions."""
    from importlib.metadata import PackageNotFoundError, version

    import numba

    try:
        numba_cuda = version("numba-cuda")
    except PackageNotFoundError:
        numba_cuda = "n/a"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numba-cuda": numba_cuda,
    }


def versions_line(found: dict[str, str]) -> str:
    """'Python 3.11.7, torch 2.5.1, ...' from ``versions()``."""
    return ", ".join(
        f"{name.capitalize() if name == 'python' else name} {v}" for name, v in found.items()
    )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    """CPU (and GPU) of this machine, with the thread counts torch and numba use."""
    import numba

    # an OpenMP wait policy set in the environment changes how threads wait on a loaded host
    policy = os.environ.get("OMP_WAIT_POLICY")
    waits = f", OMP_WAIT_POLICY={policy}" if policy else ""
    parts = [
        f"{cpu_name()}, {os.cpu_count()} logical CPUs ({torch.get_num_threads()} torch threads, "
        f"{numba.get_num_threads()} numba threads{waits}), {platform.system()} "
        f"{platform.release()}"
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts.append(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    return "; ".join(parts)


def load_average() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def today() -> str:
    return _dt.date.today().isoformat()


REQUIRED_META = ("benchmark", "date", "command", "machine", "versions")


class RecordsError(ValueError):
    """A benchmark records file that is not JSON, or not in the records format."""


def cell(value: float | None, fmt: str) -> str:
    """``value`` formatted for a table cell, "-" where it was not measured."""
    return "-" if value is None else format(value, fmt)


def table_head(head: list[str], text_columns: int = 3) -> list[str]:
    """A markdown table's header and rule: the first ``text_columns`` columns left-aligned, the
    figures after them right-aligned."""
    rule = ["---"] * text_columns + ["---:"] * (len(head) - text_columns)
    return ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]


def table_row(cells: list[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def records_path(markdown: Path, name: str) -> Path:
    """Where benchmark ``name`` keeps its JSON records: beside the markdown it renders."""
    return sections.records_of(markdown, name)


def command(module: str, argv: list[str]) -> str:
    """The command line that reproduces a run: ``python -m <module> <argv>``."""
    return f"python -m {module}" + (" " + shlex.join(argv) if argv else "")


def meta(benchmark: str, command: str, device: torch.device, /, **extra: Any) -> dict[str, Any]:
    """The ``meta`` of a new record: what ran (``command``), where, with which versions, when."""
    return {
        "benchmark": benchmark,
        "date": today(),
        "command": command,
        "machine": machine(device),
        "versions": versions(),
        **extra,
    }


def write_records(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (``{"meta": ..., "rows": ...}``) to ``path`` as JSON; return ``path``."""
    missing = [key for key in ("meta", "rows") if key not in payload]
    if missing:
        raise RecordsError(f"records for {path} lack {', '.join(missing)}; need meta and rows")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def read_records(path: str | os.PathLike) -> dict[str, Any]:
    """A benchmark's JSON records, checked: ``{"meta": {...}, "rows": [...], ...}``.

    Args:
        path: the records file, e.g. ``docs/benchmarks.ops.json`` (``records_path`` says where a
            benchmark writes its records).

    Returns:
        The whole document: ``meta`` (``benchmark``, ``date``, ``command``, ``machine``,
        ``versions`` and the benchmark's own settings), ``rows`` (one dict per table row) and
        whatever else the benchmark keeps (e.g. the models' raw ``runs``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RecordsError: ``path`` is not JSON, or not an object with a ``meta`` object holding
            the keys above and a ``rows`` list; the one-line message names the file.

    Example:
        >>> records = read_records("docs/benchmarks.ops.json")  # doctest: +SKIP
        >>> records["meta"]["command"], len(records["rows"])  # doctest: +SKIP
        ('python -m involution.bench.ops --reps 25', 20)
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RecordsError(f"{path} is not JSON ({error.msg} at line {error.lineno})") from None
    except UnicodeDecodeError:
        raise RecordsError(f"{path} is not JSON (not UTF-8 text)") from None
    if not isinstance(document, dict):
        raise RecordsError(f"{path} holds a JSON {type(document).__name__}; expected an object")
    found = document.get("meta")
    if not isinstance(found, dict) or not isinstance(document.get("rows"), list):
        raise RecordsError(f"{path} lacks a 'meta' object and a 'rows' list (benchmark records)")
    missing = [key for key in REQUIRED_META if key not in found]
    if missing:
        raise RecordsError(f"{path}: meta lacks {', '.join(missing)}")
    return document


def records_to_render(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The records at ``path`` for a benchmark's ``--render``; a missing or malformed file ends
    the command with the parser's one-line error naming it."""
    if not Path(path).is_file():
        parser.error(f"argument --render: no records at {path}")
    try:
        return read_records(path)
    except RecordsError as error:
        parser.error(f"argument --render: {error}")
