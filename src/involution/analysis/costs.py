"""What each operator costs: parameters and multiply-adds per model and per spatial operator, and
the operator benchmark (its JSON records, docs/benchmarks.ops.json, or a fresh small run)."""

from __future__ import annotations

import math
import os
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
            rows.append(
                {"operator": label, "params": count_params(module), "macs": macs, "note": ""}
            )
        except Exception as error:
            rows.append(
                {"operator": label, "params": math.nan, "macs": math.nan, "note": first_line(error)}
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# benchmarks


BENCHMARK_COLUMNS = [
    "backend",
    "shape",
    "dtype",
    "median_ms",
    "min_ms",
    "peak_mib",
    "vs_depthwise",
    "table",
]


def benchmark_table(records: dict[str, Any]) -> pd.DataFrame:
    """The operator benchmark's records (``bench.report.read_records``) as one row per measured
    candidate and shape; failed candidates (no time) are left out. Columns: backend, shape,
    dtype, median_ms, min_ms, peak_mib, vs_depthwise, table (the section's heading)."""
    from involution.bench.ops import title

    label = title(records["meta"])
    rows = [
        {
            "backend": row["name"],
            "shape": row["shape"],
            "dtype": row.get("dtype"),
            "median_ms": row["median"] * 1e3,
            "min_ms": row["min"] * 1e3 if row.get("min") is not None else math.nan,
            "peak_mib": row["peak"] / 2**20 if row.get("peak") is not None else math.nan,
            "vs_depthwise": row["ratio"] if row.get("ratio") is not None else math.nan,
            "table": label,
        }
        for row in records["rows"]
        if row.get("median") is not None
    ]
    return pd.DataFrame(rows, columns=BENCHMARK_COLUMNS)


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
    backend, shape, median_ms and table="fresh" (as ``load_benchmarks``)."""
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
        kernel = torch.randn(
            n, g, kernel_size, kernel_size, h, w, device=device, requires_grad=True
        )
        for backend in backends:

            def step(
                backend: str = backend, x: torch.Tensor = x, kernel: torch.Tensor = kernel
            ) -> None:
                ops.involution2d(x, kernel, backend=backend).sum().backward()
                if device == "cuda":
                    torch.cuda.synchronize()

            try:
                records.append(
                    {
                        "backend": backend,
                        "shape": shape,
                        "median_ms": _median_ms(step, repeats),
                        "table": "fresh",
                    }
                )
            except Exception:  # a backend that cannot run here is left out
                continue
        conv = torch.nn.Conv2d(
            c, c, kernel_size, padding=kernel_size // 2, groups=c, bias=False
        ).to(device)

        def conv_step(conv: torch.nn.Module = conv, x: torch.Tensor = x) -> None:
            conv(x).sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()

        records.append(
            {
                "backend": f"depthwise conv {kernel_size}x{kernel_size}",
                "shape": shape,
                "median_ms": _median_ms(conv_step, repeats),
                "table": "fresh",
            }
        )
    return pd.DataFrame(records, columns=["backend", "shape", "median_ms", "table"])


def _records_files(path: PathLike | None) -> list[Path]:
    """The records files to read: ``path`` itself, or the operator records beside a markdown
    file (``None``: docs/benchmarks.md), the CPU's and (where it exists) the GPU's."""
    from involution.bench import ops, report

    path = Path(path) if path is not None else project_root() / "docs" / "benchmarks.md"
    if path.suffix != ".md":
        return [path]
    cpu, gpu = (report.records_path(path, name) for name in (ops.NAME, ops.GPU_NAME))
    return [cpu, gpu] if gpu.is_file() else [cpu]


def load_benchmarks(
    path: PathLike | None = None, fresh_if_missing: bool = True, **fresh: Any
) -> pd.DataFrame:
    """Operator benchmark medians per backend and shape, from the records ``make bench-ops``
    writes; a small fresh run on this machine when there are none.

    Args:
        path: a records file (``docs/benchmarks.ops.json``, ``benchmarks.ops.gpu.json``), or a
            markdown file whose operator records lie beside it; ``None``: the records beside
            ``docs/benchmarks.md`` (the CPU's, and the GPU's where present).
        fresh_if_missing: when the records file is missing or holds no measured row, run
            ``quick_benchmark(**fresh)`` instead (and say so); ``False``: raise.
        **fresh: arguments of ``quick_benchmark`` (``shapes``, ``repeats``, ...).

    Returns:
        One row per measured candidate and shape: backend, shape, dtype, median_ms, min_ms,
        peak_mib, vs_depthwise and table (the benchmark section's heading; "fresh" for a fresh
        run, which has backend, shape, median_ms and table only).

    Raises:
        BenchmarksUnavailableError: a records file that is not JSON, not benchmark records, or
            the records of another benchmark (one line naming the file); with
            ``fresh_if_missing=False`` also a missing file or one without measured rows.

    Example:
        >>> bench = load_benchmarks()  # doctest: +SKIP
        >>> bench.pivot_table("median_ms", "shape", "backend")  # doctest: +SKIP
    """
    from involution.bench import ops, report

    tables, reasons = [], []
    for file in _records_files(path):
        if not file.is_file():
            reasons.append(f"{file} does not exist")
            continue
        try:
            records = report.read_records(file)
        except report.RecordsError as error:
            raise BenchmarksUnavailableError(str(error)) from None
        benchmark = records["meta"]["benchmark"]
        if benchmark not in (ops.NAME, ops.GPU_NAME):
            raise BenchmarksUnavailableError(
                f"{file} holds the records of benchmark {benchmark!r}; expected the operator "
                f"benchmark's ({ops.NAME!r} or {ops.GPU_NAME!r})"
            )
        table = benchmark_table(records)
        if table.empty:
            reasons.append(f"{file} holds no measured row")
        tables.append(table)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if not table.empty:
        return table
    reason = "; ".join(reasons)
    if not fresh_if_missing:
        raise BenchmarksUnavailableError(
            f"{reason}: run `make bench-ops` or use fresh_if_missing=True"
        )
    print(f"{reason}: running a small fresh benchmark instead")
    return quick_benchmark(**fresh)
