"""``make bench-ops`` end to end on a tiny shape: the section it writes, and that it replaces only
its own section of the output file. Runs in a subprocess because the benchmark changes glibc's
heap settings for its whole process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from involution.bench.ops import BEGIN, END, write_section


def _bench(tmp_path: Path, *extra: str) -> str:
    out = tmp_path / "benchmarks.md"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "involution.bench.ops",
            "--device",
            "cpu",
            "--shapes",
            "16x9x3",
            "--reps",
            "2",
            "--warmup",
            "1",
            "--no-compile",
            "--output",
            str(out),
            *extra,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.read_text()


@pytest.mark.parametrize(
    ("heap", "says"), [("steady", "Heap: steady"), ("default", "Heap: glibc defaults")]
)
def test_bench_ops_writes_its_table(tmp_path: Path, heap: str, says: str) -> None:
    (tmp_path / "benchmarks.md").write_text("# Benchmarks\n\nkept by another benchmark\n")
    text = _bench(tmp_path, "--heap", heap)
    assert "kept by another benchmark" in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert says in text
    rows = [line for line in text.splitlines() if line.startswith("| 8, 16, 9x9, 3, 1 |")]
    names = [row.split("|")[3].strip() for row in rows]
    assert names == ["depthwise conv2d", "reference", "numba_cpu"]
    for row in rows:
        median = row.split("|")[4].strip()
        assert float(median) > 0, row
    assert "numba_cpu" in text.split("Target")[1]  # the verdict line for the one shape


def test_write_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    path = tmp_path / "b.md"
    path.write_text("# Benchmarks\n\nintro\n")
    write_section(path, "first")
    path.write_text(path.read_text() + "\n## Another benchmark\n\ntail\n")
    write_section(path, "second")
    text = path.read_text()
    assert "first" not in text and "second" in text
    assert text.index("intro") < text.index(BEGIN) < text.index("second") < text.index("tail")
