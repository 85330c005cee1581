"""The direction of imports (docs/architecture.md): each layer imports only the layers below it,
never a sibling or anything above; ``kernels/`` and ``rules`` import nothing of ours.
Every import counts, the ones inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "involution"
# the package's top-level names, lowest first; names on one line are siblings
LAYERS = [
    ("kernels", "rules"),
    ("ops",),
    ("layers",),
    ("models",),
    ("data", "tasks", "runs"),
    ("runner",),
    ("train", "eval", "bench"),
    ("analysis",),  # beside the stack: reads run records and benchmark records for the notebooks
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def top(path: Path) -> str:
    """``src/involution/runner/build.py`` -> ``runner``; ``kernels/cpu/nhwc.py`` -> ``kernels``."""
    if path.is_relative_to(REPO / "kernels"):
        return "kernels"
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported(path: Path) -> set[str]:
    """The top-level names of ``involution`` a module imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "involution":
                names |= {alias.name for alias in node.names}
            elif node.module.startswith("involution."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("involution.")}
    return names


MODULES = sorted(
    p
    for p in [*PACKAGE.rglob("*.py"), *(REPO / "kernels").rglob("*.py")]
    if p.name != "__init__.py" or p.parent != PACKAGE
)


def test_every_top_level_name_has_a_layer() -> None:
    names = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if not p.name.startswith("_")}
    assert names - {"py.typed"} == set(LEVEL) - {"kernels"}, "a new top-level module needs a layer"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_imports_a_sibling_or_anything_above(path: Path) -> None:
    own = top(path)
    for name in imported(path) - {own, "__version__"}:
        assert LEVEL[name] < LEVEL[own], f"{own} ({path.name}) imports {name}: not below it"
