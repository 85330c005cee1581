"""Each benchmark owns one section of a shared markdown file (docs/benchmarks.md), delimited by
``<!-- BEGIN name -->`` / ``<!-- END name -->``; rewriting it leaves every other section as it is.

    python -m involution.bench.sections FROM.md INTO.md [--only NAME ...]

copies sections from one such file into another, e.g. a GPU run's results
(``gpu-check-out/benchmarks.md``) into docs/benchmarks.md, replacing only the sections copied,
and with each section the JSON records it was rendered from where they lie beside the source
(``benchmarks.ops.gpu.json`` for ``involution.bench.ops.gpu``), so that records and markdown
stay in step.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

__all__ = ["markers", "read_sections", "records_of", "write_section"]

_PACKAGE = "involution.bench."
_SECTION_RE = re.compile(r"<!-- BEGIN (\S+) -->\n(.*?)<!-- END \1 -->", re.S)


def markers(name: str) -> tuple[str, str]:
    """The BEGIN and END comment lines of section ``name`` (a benchmark's module name)."""
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def read_sections(text: str) -> dict[str, str]:
    """The body of every section in ``text``, by name, in order of appearance."""
    return {m.group(1): m.group(2) for m in _SECTION_RE.finditer(text)}


def write_section(path: Path, body: str, name: str) -> None:
    """Replace (or append) section ``name`` of ``path`` with ``body``, leaving the rest
    untouched."""
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


def records_of(markdown: Path, name: str) -> Path:
    """Where the records of section ``name`` lie beside ``markdown`` (``bench.report``'s rule:
    ``<stem>.<benchmark>.json``, the benchmark being the section name after the package's)."""
    return markdown.with_name(f"{markdown.stem}.{name.removeprefix(_PACKAGE)}.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="copy benchmark sections between markdown files")
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these sections (default: all)")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        parser.error(f"argument source: {args.source} is not a file")
    found = read_sections(args.source.read_text())
    wanted = args.only or list(found)
    absent = [name for name in wanted if name not in found]
    if absent or not wanted:
        parser.error(
            f"argument --only: {args.source} has no section {', '.join(absent)}; it has: "
            + (", ".join(found) or "none")
        )
    for name in wanted:
        write_section(args.target, found[name], name)
        print(f"[sections] {name}: {args.source} -> {args.target}")
        records = records_of(args.source, name)
        if records.is_file():
            copied = records_of(args.target, name)
            shutil.copyfile(records, copied)
            print(f"[sections] {name} records: {records} -> {copied}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
