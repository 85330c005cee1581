"""What every benchmark records next to its figures: machine, versions, load, date; JSON records.

Each benchmark writes its JSON records beside the markdown file it renders
(``docs/benchmarks.<name>.json``) and its own section of that file (``bench.sections``), so that
benchmarks can be rerun one at a time without touching the others.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


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
    return ", ".join(f"{name.capitalize() if name == 'python' else name} {v}" for name, v in found.items())


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

    parts = [
        f"{cpu_name()}, {os.cpu_count()} logical CPUs ({torch.get_num_threads()} torch threads, "
        f"{numba.get_num_threads()} numba threads), {platform.system()} {platform.release()}"
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts.append(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    return "; ".join(parts)


def load_average() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def today() -> str:
    return _dt.date.today().isoformat()


def records_path(markdown: Path, name: str) -> Path:
    """Where benchmark ``name`` keeps its JSON records: beside the markdown it renders."""
    return markdown.with_name(f"{markdown.stem}.{name}.json")


def write_records(markdown: Path, name: str, payload: dict[str, Any]) -> Path:
    path = records_path(markdown, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return path


def read_records(path: Path) -> dict[str, Any]:
    """A benchmark's JSON records (``{"meta": {...}, "rows": [...]}``)."""
    return json.loads(Path(path).read_text())
