"""Keep notebooks free of outputs:
``python -m involution.analysis.nbtools --strip notebooks/*.ipynb``.

The notebooks are committed without outputs or execution counts (tests/test_notebooks.py checks);
this clears them in place, like Jupyter Lab's "Clear All Outputs", without starting a kernel.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import nbformat


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m involution.analysis.nbtools", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--strip", action="store_true", help="clear outputs in place (default: only report)"
    )
    parser.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
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
