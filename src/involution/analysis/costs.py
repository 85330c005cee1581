"""What each operator costs: parameters and multiply-adds per model and per spatial operator, and
the operator benchmark (docs/benchmarks.md, or a fresh small run)."""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from involution.analysis.errors import AnalysisError, BenchmarksUnavailableError, first_line
from involution.analysis.locate import project_root

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# model and operator counts


def cost_table(
    families: Iterable[str] | None = None,
    depths: Iterable[int] | None = None,
    image_size: int = 224,
    num_classes: int = 1000,
    in_channels: int = 3,
) -> pd.DataFrame:
    """Params and MACs of every registered ``<family><depth>`` model (built on the meta device:
    no memory, no arithmetic). Columns: model, family, operator, depth, params, macs."""
    from involution.models import FAMILIES, STAGE_DEPTHS, count_macs, count_params, create_model

    families = list(families) if families is not None else list(FAMILIES)
    depths = list(depths) if depths is not None else list(STAGE_DEPTHS)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise AnalysisError(f"unknown model families {unknown}; registered: {sorted(FAMILIES)}")
    rows = []
    for family in families:
        for depth in depths:
            name = f"{family}{depth}"
            try:
                with torch.device("meta"):
                    model = create_model(name, num_classes=num_classes, in_channels=in_channels)
                macs = count_macs(model, (in_channels, image_size, image_size))
            except Exception as error:  # one line naming the model
                raise AnalysisError(f"cannot count {name}: {first_line(error)}") from None
            rows.append(
                {
                    "model": name,
                    "family": family,
                    "operator": model.operator["name"],
                    "depth": depth,
                    "params": count_params(model),
                    "macs": macs,
                }
            )
    table = pd.DataFrame(rows)
    table["params_m"] = table["params"] / 1e6
    table["macs_g"] = table["macs"] / 1e9
    return table


DEFAULT_OPERATORS: tuple[dict[str, Any], ...] = (
    {"name": "convolution", "kernel_size": 3},
    {"name": "convolution", "kernel_size": 7},
    {"name": "convolution", "kernel_size": 7, "groups": -1},  # -1: depthwise (groups = channels)
    {"name": "involution", "kernel_size": 7, "group_channels": 16, "reduction_ratio": 4},
    {"name": "attention", "kernel_size": 7, "heads": 8},
)


def operator_label(operator: dict[str, Any]) -> str:
    name = operator["name"]
    k = operator.get("kernel_size", 3)
    if name == "convolution" and operator.get("groups", 1) != 1:
        return f"depthwise conv {k}x{k}"
    return f"{name} {k}x{k}"


def spatial_op_costs(
    channels: int = 256,
    size: int = 14,
    operators: Sequence[dict[str, Any]] = DEFAULT_OPERATORS,
) -> pd.DataFrame:
    """Params and MACs of one spatial operator (a bottleneck's middle layer) on [1, C, size, size].

    ``groups: -1`` in a convolution means depthwise. Operators that ``make_spatial_op`` does not
    know (yet) are skipped with ``note`` saying why.
    """
    from involution.layers import make_spatial_op
    from involution.models import count_macs, count_params

    rows = []
    for operator in operators:
        spec = dict(operator)
        if spec.get("groups") == -1:
            spec["groups"] = channels
        label = operator_label(operator)
        try:
            with torch.device("meta"):
                module = make_spatial_op(spec, channels)
            macs = count_macs(module, (channels, size, size))
            rows.append({"operator": label, "params": count_params(module), "macs": macs, "note": ""})
        except Exception as error:
            rows.append({"operator": label, "params": math.nan, "macs": math.nan, "note": first_line(error)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# benchmarks


_UNITS_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "ms": 1.0, "s": 1e3}
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def read_markdown_tables(text: str) -> list[pd.DataFrame]:
    """Every pipe table in a markdown text, as string DataFrames (``attrs['heading']``: the
    nearest heading above it)."""
    tables: list[pd.DataFrame] = []
    heading = ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        nxt = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if line.startswith("|") and re.fullmatch(r"\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?", nxt):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            index += 2
            while index < len(lines) and lines[index].strip().startswith("|"):
                cells = [c.strip() for c in lines[index].strip().strip("|").split("|")]
                rows.append((cells + [""] * len(header))[: len(header)])
                index += 1
            frame = pd.DataFrame(rows, columns=header)
            frame.attrs["heading"] = heading
            tables.append(frame)
            continue
        index += 1
    return tables


def _unit_of(text: str) -> str | None:
    match = re.search(r"(?<![a-zA-Z])(ns|us|µs|μs|ms|s)(?![a-zA-Z])", text)
    return match.group(1) if match else None


def _to_ms(cell: str, header: str) -> float:
    """'1.23 ms', '1.23', '1.2 ± 0.1', '**0.8**' -> milliseconds (unit from the cell or header)."""
    match = _NUMBER.search(str(cell).replace(",", ""))
    if not match:
        return math.nan
    unit = _unit_of(str(cell)[match.end() :]) or _unit_of(header) or "ms"
    return float(match.group()) * _UNITS_MS[unit]


def _time_columns(frame: pd.DataFrame) -> list[str]:
    return [
        c
        for c in frame.columns
        if re.search(r"median|time|\(ms\)|\(us\)|\(µs\)|\bms\b|\bus\b|fwd|bwd|forward|backward", c, re.I)
        and not re.search(r"speed.?up|ratio|vs\b|x\s*of|relative|%|gb/s|bandwidth|flop", c, re.I)
    ]


def _pick(columns: Sequence[str], *patterns: str) -> str | None:
    for pattern in patterns:
        for column in columns:
            if re.search(pattern, column, re.I):
                return column
    return None


def benchmarks_from_markdown(text: str) -> pd.DataFrame:
    """The forward+backward median per backend and shape, from whatever tables ``text`` holds.

    Long tables (a backend column and a time column) and wide tables (one time column per
    backend) are both read. Result columns: backend, shape, median_ms, table.
    """
    records = []
    for number, frame in enumerate(read_markdown_tables(text)):
        columns = list(frame.columns)
        backend_col = _pick(columns, r"backend", r"impl", r"^op(erator)?$", r"method", r"kernel$")
        shape_col = _pick(columns, r"shape", r"size", r"input", r"config", r"case")
        times = _time_columns(frame)
        label = frame.attrs.get("heading") or f"table {number + 1}"
        if backend_col is not None and times:
            time_col = _pick(times, r"f(or)?w(ar)?d\s*\+\s*b(ack)?w(ar)?d", r"fwd.?bwd", r"median", r"total") or times[-1]
            for _, row in frame.iterrows():
                records.append(
                    {
                        "backend": row[backend_col],
                        "shape": row[shape_col] if shape_col else "",
                        "median_ms": _to_ms(row[time_col], time_col),
                        "table": label,
                    }
                )
        elif shape_col is not None and times:
            for _, row in frame.iterrows():
                for column in times:
                    name = re.sub(r"\s*\((ns|us|µs|μs|ms|s)\)\s*|\s*median\s*", " ", column, flags=re.I).strip()
                    records.append(
                        {"backend": name or column, "shape": row[shape_col], "median_ms": _to_ms(row[column], column), "table": label}
                    )
    table = pd.DataFrame(records, columns=["backend", "shape", "median_ms", "table"])
    return table[table["median_ms"].notna()].reset_index(drop=True)


def _median_ms(fn: Any, repeats: int) -> float:
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def quick_benchmark(
    shapes: Sequence[tuple[int, int, int, int]] = ((2, 32, 16, 16), (2, 64, 8, 8)),
    kernel_size: int = 7,
    group_channels: int = 16,
    backends: Sequence[str] | None = None,
    repeats: int = 5,
) -> pd.DataFrame:
    """A fresh small forward+backward benchmark on this machine: ``involution2d`` per available
    backend, and the depthwise KxK convolution as the yardstick. Columns as
    ``benchmarks_from_markdown`` (backend, shape, median_ms, table="fresh")."""
    from involution import ops

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if backends is None:
        backends = [b for b in getattr(ops, "BACKENDS", ("reference",)) if b != "auto"]
        if device == "cpu":
            backends = [b for b in backends if "cuda" not in b]
    records = []
    for n, c, h, w in shapes:
        shape = f"{n}x{c}x{h}x{w}"
        g = max(1, c // group_channels)
        x = torch.randn(n, c, h, w, device=device, requires_grad=True)
        kernel = torch.randn(n, g, kernel_size, kernel_size, h, w, device=device, requires_grad=True)
        for backend in backends:

            def step(backend: str = backend, x: torch.Tensor = x, kernel: torch.Tensor = kernel) -> None:
                ops.involution2d(x, kernel, backend=backend).sum().backward()
                if device == "cuda":
                    torch.cuda.synchronize()

            try:
                records.append({"backend": backend, "shape": shape, "median_ms": _median_ms(step, repeats), "table": "fresh"})
            except Exception:  # a backend that cannot run here is left out
                continue
        conv = torch.nn.Conv2d(c, c, kernel_size, padding=kernel_size // 2, groups=c, bias=False).to(device)

        def conv_step(conv: torch.nn.Module = conv, x: torch.Tensor = x) -> None:
            conv(x).sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()

        records.append(
            {"backend": f"depthwise conv {kernel_size}x{kernel_size}", "shape": shape, "median_ms": _median_ms(conv_step, repeats), "table": "fresh"}
        )
    return pd.DataFrame(records, columns=["backend", "shape", "median_ms", "table"])


def load_benchmarks(path: PathLike | None = None, fresh_if_missing: bool = True, **fresh: Any) -> pd.DataFrame:
    """Operator benchmark medians from ``path`` (default ``docs/benchmarks.md``); when the file is
    missing or holds no readable table, a ``quick_benchmark(**fresh)`` run (or
    ``BenchmarksUnavailableError`` with ``fresh_if_missing=False``)."""
    path = Path(path) if path is not None else project_root() / "docs" / "benchmarks.md"
    reason = f"{path} does not exist"
    if path.is_file():
        table = benchmarks_from_markdown(path.read_text(encoding="utf-8"))
        if not table.empty:
            return table
        reason = f"{path} holds no table with a backend and a median time"
    if not fresh_if_missing:
        raise BenchmarksUnavailableError(f"{reason}: run `make bench-ops` or use fresh_if_missing=True")
    print(f"{reason}: running a small fresh benchmark instead")
    return quick_benchmark(**fresh)
