"""Each benchmark owns one section of a shared markdown file (docs/benchmarks.md), delimited by
``<!-- BEGIN name -->`` / ``<!-- END name -->``; rewriting it leaves every other section as it is."""

from __future__ import annotations

from pathlib import Path

__all__ = ["markers", "write_section"]


def markers(name: str) -> tuple[str, str]:
    """The BEGIN and END comment lines of section ``name`` (a benchmark's module name)."""
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def write_section(path: Path, body: str, name: str) -> None:
    """Replace (or append) section ``name`` of ``path`` with ``body``, leaving the rest untouched."""
    begin, end = markers(name)
    section = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
