"""Run the notebooks headless and keep them free of outputs.

- ``python -m involution.analysis.nbtools --execute notebooks/*.ipynb`` (``make notebooks``):
  each notebook runs in a fresh kernel of this interpreter (nbclient, the library behind
  ``jupyter execute``) from its own folder; the executed copy is written to
  ``outputs/notebooks/`` (``--out``), the notebook itself is left as it is; the figures go where
  its first cell says (``outputs/figures/<notebook>/``, or ``INVOLUTION_NB_FIGDIR``). A notebook
  that stops is one line (its name and the error); the others still run; exit status 1.
- ``--strip``: the notebooks are committed without outputs or execution counts
  (tests/test_notebooks.py checks); this clears them in place, like Jupyter Lab's "Clear All
  Outputs", without starting a kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import nbformat

from involution.runs.locate import project_root

KERNEL = "involution-headless"


def has_outputs(notebook: nbformat.NotebookNode) -> list[int]:
    """Indices of the code cells that carry outputs or an execution count."""
    return [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]


def strip(path: str | os.PathLike) -> bool:
    """Clear outputs and execution counts of one notebook in place; True when it changed."""
    notebook = nbformat.read(path, as_version=4)
    if not has_outputs(notebook):
        return False
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.write(notebook, path)
    return True


class NotebookFailed(RuntimeError):
    """A notebook stopped; the message is one line: the notebook and its error."""


def kernel_spec(root: str | os.PathLike) -> Path:
    """A kernel spec named ``KERNEL`` under ``root`` that starts this interpreter (whatever
    kernels the user has registered, the notebooks run on the project's environment)."""
    spec = Path(root) / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    argv.append("--IPKernelApp.log_level=ERROR")  # not its transport notice on every start
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    return Path(root)


def execute(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    env: Mapping[str, str] | None = None,
    timeout: int = 1800,
) -> Path:
    """Run one notebook headless (working directory: its folder) and write the executed copy to
    ``out_dir``; returns the copy's path. NotebookFailed (one line) when a cell raises: the copy,
    executed up to that cell, is written all the same."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    copy = Path(out_dir) / path.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as kernels:
        manager = KernelManager(
            kernel_name=KERNEL,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_spec(kernels))]),
        )
        client = NotebookClient(
            notebook,
            km=manager,
            timeout=timeout,
            resources={"metadata": {"path": str(path.parent.resolve())}},
        )
        try:
            client.execute(env={**os.environ, "MPLBACKEND": "Agg", **(env or {})})
        except CellExecutionError as error:
            nbformat.write(notebook, copy)
            shown = f"{error.ename}: {error.evalue}".strip().splitlines()
            raise NotebookFailed(f"{path}: {shown[0] if shown else error.ename}") from None
    nbformat.write(notebook, copy)
    return copy


def figures_of(path: str | os.PathLike) -> Path:
    """Where a notebook saves its figures (its first cell's rule: ``INVOLUTION_NB_FIGDIR``, else
    ``outputs/figures/<notebook>/``)."""
    figdir = os.environ.get("INVOLUTION_NB_FIGDIR")
    return Path(figdir) if figdir else project_root() / "outputs" / "figures" / Path(path).stem


def run_all(paths: Sequence[str], out_dir: str | os.PathLike) -> int:
    """``--execute``: every notebook in turn, one line each; 1 when one stopped."""
    failed = 0
    for path in paths:
        try:
            copy = execute(path, out_dir)
        except NotebookFailed as error:
            print(f"failed   {error}", file=sys.stderr, flush=True)
            failed += 1
            continue
        print(f"ran      {path}: figures in {figures_of(path)}, executed copy {copy}", flush=True)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m involution.analysis.nbtools", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--strip", action="store_true", help="clear outputs in place (default: only report)"
    )
    parser.add_argument(
        "--execute", action="store_true", help="run each headless; executed copies go to --out"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder of the executed copies (default: outputs/notebooks of the project root)",
    )
    parser.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    if args.execute:
        return run_all(args.notebooks, args.out or project_root() / "outputs" / "notebooks")
    dirty = 0
    for path in args.notebooks:
        if args.strip:
            if strip(path):
                print(f"stripped {path}")
        elif cells := has_outputs(nbformat.read(path, as_version=4)):
            print(f"{path}: cells {cells} carry outputs")
            dirty += 1
    return 1 if dirty else 0


if __name__ == "__main__":
    raise SystemExit(main())
