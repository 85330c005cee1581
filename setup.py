"""Package discovery that follows the tree (everything else is in pyproject.toml).

`src/involution` is the package; the top-level `kernels/` (torch-free Numba code) and `conf/` (the
Hydra tree, whose config groups are data folders) install as `involution.kernels` and
`involution.conf`. pyproject's `packages.find` names packages after the folder it searches and
cannot put them under `involution.`, hence this file: every folder below the three roots is a
package, so a new module, kernel subpackage or config group needs no edit here or in pyproject.
"""

import warnings

from setuptools import find_namespace_packages, setup
from setuptools.warnings import InformationOnly

ROOTS = {"involution": "src/involution", "involution.kernels": "kernels", "involution.conf": "conf"}


def packages() -> list[str]:
    found = []
    for name, folder in ROOTS.items():
        below = find_namespace_packages(folder, exclude=["*__pycache__*"])
        found += [name, *(f"{name}.{package}" for package in below)]
    return found


with warnings.catch_warnings():
    # An editable install of a mapped layout (kernels/ and conf/ under involution.) goes through
    # a meta path finder, and setuptools then prints a note (not a warning) that folders named
    # like the package in the working directory may shadow it. None does here: the package is
    # under src/, so the note is noise on a newcomer's first command.
    warnings.filterwarnings("ignore", message="Editable installation", category=InformationOnly)
    setup(packages=packages(), package_dir=ROOTS)
