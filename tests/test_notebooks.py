"""The notebooks run headless (nbclient) against a tiny real sweep and checkpoints, save every
figure as a non-blank PNG, stop bad input with one line in the first cell that needs it, and are
committed without outputs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from matplotlib.image import imread
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from analysis_artifacts import Artifacts, make_artifacts
from conftest import REPO, SCENE_FIT, SCENE_TASK, TINY_SCENES, run_module

NOTEBOOKS = REPO / "notebooks"
FIGURES = {
    "01_ablation_results": ["accuracy_vs_kernel_size", "accuracy_vs_cost", "training_curves"],
    "02_involution_kernels": ["kernels_at_pixels", "kernel_variation_maps", "convolution_filters"],
    "03_operator_costs": ["params_macs_per_depth", "spatial_operator_costs", "operator_benchmark"],
    "04_detection_sweep": ["map_by_operator_and_neck", "map_vs_macs"],
}
KERNEL = "involution-tests"
# A stand-in for docs/benchmarks.ops.json in the records format `make bench-ops` writes.
BENCHMARK_RECORDS = {
    "meta": {
        "benchmark": "ops",
        "date": "2026-01-01",
        "command": "python -m involution.bench.ops",
        "machine": "a test machine",
        "versions": {"python": "3", "torch": "2"},
        "device": "cpu",
    },
    "rows": [
        {
            "shape": shape,
            "dtype": "float32",
            "name": name,
            "median": ms / 1e3,
            "min": ms / 1e3,
            "peak": None,
            "ratio": None,
            "error": None,
        }
        for shape, times in (
            ("2, 64, 28x28, 7, 4", (12.5, 3.1, 2.4)),
            ("8, 256, 14x14, 7, 16", (40.2, 9.8, 6.7)),
        )
        for name, ms in zip(("reference", "numba_cpu", "depthwise conv2d"), times)
    ],
}


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Artifacts:
    return make_artifacts(tmp_path_factory)


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernel spec for this interpreter (CI starts from a fresh venv; nothing is registered)."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    return root


def execute(
    name: str, kernel_dir: Path, cwd: Path, fails: bool = False, **params: object
) -> nbformat.NotebookNode:
    """Run notebooks/<name>.ipynb in a fresh kernel (working directory ``cwd``) with the
    environment variables ``INVOLUTION_NB_<KEY>=value``; return the executed notebook. With
    ``fails=True`` a cell must raise; execution stops there and the notebook is returned."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    manager = KernelManager(
        kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    )
    client = NotebookClient(
        notebook, km=manager, timeout=180, resources={"metadata": {"path": str(cwd)}}
    )
    env = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.update({f"INVOLUTION_NB_{key.upper()}": str(value) for key, value in params.items()})
    try:
        client.execute(env=env)
    except CellExecutionError:
        if not fails:
            raise
        return notebook
    assert not fails, f"{name} ran through; a cell should have stopped on the bad input"
    return notebook


def assert_figures(figdir: Path, names: list[str]) -> None:
    for name in names:
        path = figdir / f"{name}.png"
        assert path.is_file(), (
            f"{path.name} was not saved; saved: {sorted(p.name for p in figdir.glob('*.png'))}"
        )
        pixels = imread(path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 50, f"{path.name}: {pixels.shape}"
        assert float(np.std(pixels[..., :3])) > 0.01, f"{path.name} is blank"


def one_line_error(notebook: nbformat.NotebookNode) -> tuple[int, dict]:
    """(index of the cell that failed, its error output); the error must be one line."""
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                assert len(output["traceback"]) == 1, "\n".join(output["traceback"])
                return index, output
    raise AssertionError("no cell failed")


def first_cell_with(notebook: nbformat.NotebookNode, text: str) -> int:
    return next(i for i, cell in enumerate(notebook.cells) if text in cell.source)


# ---------------------------------------------------------------------------------------------
# committed notebooks


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} carry outputs or execution counts; "
        "clear them before committing "
        f"(python -m involution.analysis.nbtools --strip {path.relative_to(REPO)})"
    )


def test_every_notebook_is_known() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_first_code_cell_holds_the_parameters(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    assert "INVOLUTION_NB_FIGDIR" in first.source


# ---------------------------------------------------------------------------------------------
# headless runs


@pytest.mark.slow
def test_ablation_results_notebook(artifacts: Artifacts, kernel_dir: Path, tmp_path: Path) -> None:
    figdir = tmp_path / "figures"
    notebook = execute(
        "01_ablation_results", kernel_dir, tmp_path, multirun=artifacts.multirun, figdir=figdir
    )
    assert_figures(figdir, FIGURES["01_ablation_results"])
    table = notebook.cells[first_cell_with(notebook, "load_sweep(")].outputs[0]["data"][
        "text/plain"
    ]
    assert "operator.kernel_size" in table


@pytest.mark.slow
def test_involution_kernels_notebook(
    artifacts: Artifacts, kernel_dir: Path, tmp_path: Path
) -> None:
    figdir = tmp_path / "figures"
    execute(
        "02_involution_kernels",
        kernel_dir,
        tmp_path,
        checkpoint=artifacts.involution_checkpoint,
        conv_checkpoint=artifacts.convolution_checkpoint,
        figdir=figdir,
    )
    assert_figures(figdir, FIGURES["02_involution_kernels"])


@pytest.mark.slow
def test_operator_costs_notebook(kernel_dir: Path, tmp_path: Path) -> None:
    figdir = tmp_path / "figures"
    benchmarks = tmp_path / "benchmarks.ops.json"
    benchmarks.write_text(json.dumps(BENCHMARK_RECORDS))
    notebook = execute(
        "03_operator_costs", kernel_dir, tmp_path, benchmarks=benchmarks, figdir=figdir
    )
    assert_figures(figdir, FIGURES["03_operator_costs"])
    bench = notebook.cells[first_cell_with(notebook, "load_benchmarks(")].outputs[0]["data"][
        "text/plain"
    ]
    assert "numba_cpu" in bench


# ---------------------------------------------------------------------------------------------
# bad input: one line, in the first cell that needs it


@pytest.mark.slow
def test_directory_that_is_not_a_multirun(
    artifacts: Artifacts, kernel_dir: Path, tmp_path: Path
) -> None:
    not_a_sweep = artifacts.multirun / "0"  # a single job's run directory
    notebook = execute(
        "01_ablation_results",
        kernel_dir,
        tmp_path,
        fails=True,
        multirun=not_a_sweep,
        figdir=tmp_path,
    )
    index, error = one_line_error(notebook)
    assert index == first_cell_with(notebook, "load_sweep(")
    assert (
        error["ename"] == "NotAMultirunError"
        and "not a Hydra multirun directory" in error["evalue"]
    )


@pytest.mark.slow
def test_convolution_checkpoint_given_to_the_kernel_notebook(
    artifacts: Artifacts, kernel_dir: Path, tmp_path: Path
) -> None:
    notebook = execute(
        "02_involution_kernels",
        kernel_dir,
        tmp_path,
        fails=True,
        checkpoint=artifacts.convolution_checkpoint,
        figdir=tmp_path,
    )
    index, error = one_line_error(notebook)
    assert index == first_cell_with(notebook, "load_involution_model(")
    assert error["ename"] == "CheckpointError" and "not involution" in error["evalue"]


@pytest.mark.slow
def test_unreachable_wandb_project(kernel_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(
        "WANDB_BASE_URL", "http://127.0.0.1:9"
    )  # nothing listens on the discard port
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    notebook = execute(
        "01_ablation_results",
        kernel_dir,
        tmp_path,
        fails=True,
        wandb_project="someone/involution",
        figdir=tmp_path,
    )
    index, error = one_line_error(notebook)
    assert index == first_cell_with(notebook, "load_sweep(")
    assert error["ename"] == "WandbUnavailableError" and "cannot be reached" in error["evalue"]


def test_make_lab_starts_jupyter_lab_on_the_venv() -> None:
    text = (REPO / "Makefile").read_text()
    target = next(line for line in text.splitlines() if line.startswith("lab:"))
    assert "## " in target
    assert "jupyter lab" in text and "jupyterlab==" in text


@pytest.mark.slow
def test_detection_sweep_notebook(kernel_dir: Path, tmp_path: Path) -> None:
    """make sweep SWEEP=neck_operator, narrowed on the command line to the two necks of a
    convolution backbone: tiny Faster R-CNNs of two steps."""
    sweep = tmp_path / "multirun"
    tiny = [*TINY_SCENES, *SCENE_FIT, *SCENE_TASK["detection_digits"]]
    args = ["sweep=neck_operator", "operator=convolution", f"hydra.sweep.dir={sweep}", *tiny]
    result = run_module("involution.train", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    figdir = tmp_path / "figures"
    notebook = execute("04_detection_sweep", kernel_dir, tmp_path, multirun=sweep, figdir=figdir)
    assert_figures(figdir, FIGURES["04_detection_sweep"])
    table = notebook.cells[first_cell_with(notebook, "load_sweep(")].outputs[0]["data"]
    assert {"best_val_map", "test_map", "involution", "convolution"} <= set(
        table["text/plain"].split()
    )
    summary = (sweep / "summary.md").read_text()
    assert "val AP %" in summary and "test AP %" in summary


@pytest.mark.slow
def test_detection_sweep_notebook_given_a_classification_sweep_says_so(
    artifacts: Artifacts, kernel_dir: Path, tmp_path: Path
) -> None:
    notebook = execute(
        "04_detection_sweep", kernel_dir, tmp_path, fails=True, multirun=artifacts.multirun
    )
    index, error = one_line_error(notebook)
    assert index == first_cell_with(notebook, "load_sweep(")
    assert "has no job with a box AP or mIoU" in error["evalue"]
