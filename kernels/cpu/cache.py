"""The kernels' compile cache, keyed on every kernel source: ``refresh``.

Numba keys a cached function on its own file's timestamp and size only. A kernel in
``blocked.py`` compiles the helpers it calls (``tiles``, ``rows``, ``simd``) into its own
machine code, so after an edit of a helper alone (a ``git pull``, say) it would load the old
code from the cache. ``refresh`` keeps a digest of all the sources beside the cache and, where it
differs, empties the cached entries of every kernel before any is loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from numba.core.caching import FunctionCache

STAMP = "kernels-sources.sha256"


def sources_digest() -> str:
    """SHA-256 of the names and contents of the CPU kernels' sources."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cached_dispatchers(modules: Iterable[ModuleType]) -> list:
    """The Numba functions of ``modules`` that use the disk cache."""
    found = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(getattr(value, "_cache", None), FunctionCache):
                found[id(value)] = value
    return list(found.values())


def refresh(dispatchers: Iterable, digest: str | None = None) -> list[str]:
    """Empty the cache of ``dispatchers`` in every cache folder whose stamp is not ``digest``
    (default: ``sources_digest()``) and stamp it; returns the folders refreshed. A folder that
    cannot be written is left as it is (Numba then compiles without caching there)."""
    digest = digest or sources_digest()
    by_folder: dict[str, list] = {}
    for dispatcher in dispatchers:
        by_folder.setdefault(dispatcher._cache.cache_path, []).append(dispatcher)
    refreshed = []
    for folder, members in by_folder.items():
        stamp = Path(folder) / STAMP
        try:
            if stamp.read_text() == digest:
                continue
        except OSError:
            pass
        try:
            for dispatcher in members:
                dispatcher._cache.flush()
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(digest)
        except OSError:
            continue
        refreshed.append(folder)
    return refreshed
