"""The package installs the way the README says, its wheel holds the whole tree (any new module,
kernel subpackage or config group included), and its two dependency lists agree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml

from conftest import REPO


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_yml_lists_the_pyproject_pins() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {
        _normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    }
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_entries = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    listed = {_normalise(r) for r in pip_entries if not r.startswith("-e")}
    assert pinned == listed, (
        f"only in pyproject: {pinned - listed}; only in environment.yml: {listed - pinned}"
    )
    assert all("==" in r for r in pinned), "every dependency is pinned"


def test_kernels_import_without_torch() -> None:
    """kernels/ is torch-free: importing it (and the package root) must not pull torch in."""
    code = "import sys, involution.kernels; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_tree_is_installed_with_the_package() -> None:
    import importlib.resources

    root = importlib.resources.files("involution.conf")
    assert root.joinpath("train.yaml").is_file()
    assert root.joinpath("operator", "involution.yaml").is_file()


# what a wheel is built from (the rest of the checkout is not package content)
SOURCES = ["src", "kernels", "conf", "setup.py", "pyproject.toml", "README.md", "LICENSE"]


def _wheel_paths(base: Path, folder: Path, pattern: str) -> set[str]:
    """Where the files of ``folder`` matching ``pattern`` belong in the wheel (kernels/ and conf/
    go under involution/, as src/involution/ does)."""
    prefix = "" if base.name == "src" else "involution/"
    return {prefix + path.relative_to(base).as_posix() for path in folder.rglob(pattern)}


def test_wheel_holds_new_modules_kernel_subpackages_and_config_groups(tmp_path: Path) -> None:
    """Built from a copy of the tree with a new kernel subpackage and a new config group (two
    levels deep): both are in the wheel with no edit of the packaging files, and the build is
    silent."""
    tree = tmp_path / "tree"
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, tree / name)
    for junk in tree.rglob("__pycache__"):
        shutil.rmtree(junk)
    (tree / "kernels" / "scratch_family").mkdir()
    (tree / "kernels" / "scratch_family" / "__init__.py").write_text("")
    (tree / "conf" / "scratch_group" / "nested").mkdir(parents=True)
    (tree / "conf" / "scratch_group" / "option.yaml").write_text("key: 1\n")
    (tree / "conf" / "scratch_group" / "nested" / "deeper.yaml").write_text("key: 2\n")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(tree)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    assert "warning" not in (build.stdout + build.stderr).lower(), build.stderr[-3000:]
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("involution-*.whl")))
    names = set(wheel.namelist())
    yamls = _wheel_paths(tree, tree / "conf", "*.yaml")
    assert "involution/conf/scratch_group/nested/deeper.yaml" in yamls
    assert yamls <= names, f"config files left out: {sorted(yamls - names)}"
    modules = _wheel_paths(tree / "src", tree / "src" / "involution", "*.py")
    kernels = _wheel_paths(tree, tree / "kernels", "*.py")
    assert "involution/kernels/scratch_family/__init__.py" in kernels
    assert modules | kernels <= names, f"modules left out: {sorted((modules | kernels) - names)}"
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    headers = wheel.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert {"License-Expression: MIT", "Requires-Python: >=3.11"} <= set(headers)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
