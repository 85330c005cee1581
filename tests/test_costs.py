"""involution.analysis.costs: params and MACs per model family and per spatial operator, and the
operator benchmark read from its JSON records (CPU and GPU), with a fresh small run when there are
none and one-line errors naming the file when they are malformed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from involution import analysis
from involution.analysis.errors import AnalysisError
from involution.bench import ops, report


def one_line(error: pytest.ExceptionInfo) -> str:
    """The message of an analysis error, which must be one line (all Jupyter shows of it)."""
    message = str(error.value)
    assert "\n" not in message and message
    name = type(error.value).__name__
    assert error.value._render_traceback_() == [f"\x1b[0;31m{name}\x1b[0m: {message}"]
    return message


# ---------------------------------------------------------------------------------------------
# params and MACs


def test_cost_table_counts_every_family() -> None:
    table = analysis.cost_table(depths=[26, 50], image_size=64, num_classes=10)
    assert {"rednet", "resnet"} <= set(table["family"])
    rednet50 = table[table["model"] == "rednet50"].iloc[0]
    resnet50 = table[table["model"] == "resnet50"].iloc[0]
    assert rednet50["operator"] == "involution" and resnet50["operator"] == "convolution"
    assert rednet50["params"] < resnet50["params"] and rednet50["macs"] > 0
    with pytest.raises(AnalysisError) as error:
        analysis.cost_table(families=["vgg"])
    assert "unknown model families" in one_line(error)


def test_spatial_op_costs() -> None:
    table = analysis.spatial_op_costs(channels=32, size=8).set_index("operator")
    assert table.loc["convolution 3x3", "params"] == 32 * 32 * 9
    assert table.loc["depthwise conv 7x7", "params"] == 32 * 49
    assert table.loc["convolution 3x3", "macs"] == 32 * 32 * 9 * 64
    assert table.loc["involution 7x7", "params"] > 0


# ---------------------------------------------------------------------------------------------
# the operator benchmark's records


def _cand(name: str, *times: float, dtype: str = "float32") -> ops.Candidate:
    return ops.Candidate(name, lambda: None, dtype, list(times))


def write_benchmarks(markdown: Path) -> None:
    """What `make bench-ops` writes on the CPU and on a GPU (from given timings), beside
    ``markdown``: benchmarks.ops.json and benchmarks.ops.gpu.json, and their sections."""
    cpu = [
        _cand("depthwise conv2d", 2.4e-3),
        _cand("reference", 12.5e-3, 12.0e-3),
        _cand("numba_cpu", 3.1e-3),
        ops.Candidate("torch.compile(reference)", lambda: None, error="RuntimeError: boom"),
    ]
    rows = ops.shape_rows(cpu, (2, 64, 28, 7), torch.float32, None, with_reference=False)
    cpu_meta = report.meta(ops.NAME, "python -m involution.bench.ops", torch.device("cpu"))
    cpu_meta.update(
        device="cpu",
        gpu=None,
        load_start="1",
        load_end="1",
        reps=2,
        warmup=1,
        heap="glibc defaults",
        bandwidth=None,
        cudnn=None,
    )
    ops.save(markdown, cpu_meta, rows)
    gpu = [_cand("depthwise conv2d", 0.1e-3), _cand("numba_cuda", 0.12e-3)]
    rows = ops.shape_rows(gpu, (32, 256, 14, 7), torch.float32, 4e12, with_reference=True)
    gpu_meta = {**cpu_meta, "benchmark": ops.GPU_NAME, "device": "cuda", "gpu": "NVIDIA H200"}
    ops.save(markdown, {**gpu_meta, "heap": None, "bandwidth": 4e12, "cudnn": 91000}, rows)


def test_load_benchmarks_reads_the_cpu_and_gpu_records(tmp_path: Path) -> None:
    markdown = tmp_path / "benchmarks.md"
    write_benchmarks(markdown)
    both = analysis.load_benchmarks(markdown)  # the records beside the markdown file
    assert both["backend"].tolist() == [
        "depthwise conv2d",
        "reference",
        "numba_cpu",
        "depthwise conv2d",
        "numba_cuda",
    ]  # the failed candidate (no time) is left out
    assert both["median_ms"].round(6).tolist() == [2.4, 12.25, 3.1, 0.1, 0.12]
    heading = "Operator: involution forward+backward vs depthwise convolution"
    assert both["table"].tolist() == [heading] * 3 + [f"{heading} (NVIDIA H200)"] * 2
    assert both["shape"].tolist()[:1] == ["2, 64, 28x28, 7, 4"]
    assert both["vs_depthwise"].round(3).tolist()[:3] == [1.0, 5.104, 1.292]
    assert both["min_ms"].tolist()[1] == pytest.approx(12.0)
    cpu = analysis.load_benchmarks(tmp_path / "benchmarks.ops.json")
    assert cpu["backend"].tolist() == ["depthwise conv2d", "reference", "numba_cpu"]
    (tmp_path / "benchmarks.ops.gpu.json").unlink()
    assert analysis.load_benchmarks(markdown, fresh_if_missing=False).equals(cpu)


def test_the_published_records_load() -> None:
    table = analysis.load_benchmarks(fresh_if_missing=False)  # docs/benchmarks.ops.json
    assert not table.empty and (table["median_ms"] > 0).all()
    assert {"depthwise conv2d", "reference", "numba_cpu"} <= set(table["backend"])


def test_load_benchmarks_falls_back_to_a_fresh_run(tmp_path: Path) -> None:
    with pytest.raises(analysis.BenchmarksUnavailableError) as error:
        analysis.load_benchmarks(tmp_path / "none.json", fresh_if_missing=False)
    assert "make bench-ops" in one_line(error) and str(tmp_path / "none.json") in str(error.value)
    fresh = analysis.load_benchmarks(tmp_path / "none.json", shapes=[(1, 16, 8, 8)], repeats=1)
    assert "reference" in set(fresh["backend"]) and "depthwise conv 7x7" in set(fresh["backend"])
    assert (fresh["median_ms"] > 0).all() and set(fresh["table"]) == {"fresh"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"meta": {', "is not JSON"),
        ('{"meta": {}, "rows": {}}', "lacks a 'meta' object and a 'rows' list"),
        (None, "holds the records of benchmark 'models'"),
    ],
)
def test_malformed_records_are_one_line_naming_the_file(
    tmp_path: Path, text: str | None, says: str
) -> None:
    path = tmp_path / "benchmarks.ops.json"
    if text is None:  # well-formed records, but of the model benchmark
        meta = report.meta("models", "python -m involution.bench.models", torch.device("cpu"))
        text = json.dumps({"meta": meta, "rows": []})
    path.write_text(text)
    with pytest.raises(analysis.BenchmarksUnavailableError) as error:
        analysis.load_benchmarks(path)  # no fresh run: the file is there but wrong
    message = one_line(error)
    assert str(path) in message and says in message


def test_benchmark_figure(tmp_path: Path) -> None:
    write_benchmarks(tmp_path / "benchmarks.md")
    figure = analysis.plot_benchmarks(analysis.load_benchmarks(tmp_path / "benchmarks.md"))
    assert len(figure.axes) == 2  # one panel per section: the CPU's and the GPU's
    pixels = imread(analysis.save_figure(figure, tmp_path, "bench"))
    assert float(np.std(pixels[..., :3])) > 0.01, "the benchmark figure is blank"
