"""The package installs the way the README says, and its two dependency lists agree."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import yaml

from conftest import REPO


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_yml_lists_the_pyproject_pins() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_entries = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    listed = {_normalise(r) for r in pip_entries if not r.startswith("-e")}
    assert pinned == listed, f"only in pyproject: {pinned - listed}; only in environment.yml: {listed - pinned}"
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
