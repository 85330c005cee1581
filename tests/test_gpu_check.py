"""``.ci/gpu-check``, the one script run on a GPU machine: its refusals (one line, exit 2, before
any work), the rows it asks the benchmarks for, and, on whatever machine runs the suite, one short
end-to-end run into a given folder (on a machine without a GPU the gpu tests skip and the benchmark
measures the CPU)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from involution.bench.sections import markers

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "gpu-check"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["a", "b"], {}, "one argument at most"),
        (["{tmp}/out"], {"PYTHON": "/nonexistent/python"}, "no Python interpreter"),
        (["{tmp}/out"], {"BUDGET": "soon"}, "BUDGET must be whole seconds"),
        (["/proc/gpu-check-out"], {}, "cannot write to the output folder"),
    ],
)
def test_refuses_in_one_line(tmp_path, args, env, says):
    done = _run(*(a.format(tmp=tmp_path) for a in args), **env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and says in done.stderr
    assert not (tmp_path / "out" / "summary.txt").exists()


def _script_flags(variable: str) -> list[str]:
    """The flags the script keeps in ``variable="..."``."""
    (value,) = re.findall(rf'^\s*{variable}="([^"]*)"$', SCRIPT.read_text(), re.M)
    return shlex.split(value)


def test_asks_for_the_issue_23_rows():
    """The operator rows: batch 64 in float32 and bfloat16, with the torch backend compiled
    beside the eager candidates; the model rows: rednet50, resnet50 and torchvision's resnet50
    at batch 64 and 128 under AMP bf16 (channels_last on every GPU row), one run each."""
    from involution.bench import models, ops

    bench_flags = " ".join(_script_flags("bench_args"))  # run for real by the test below
    assert bench_flags == "--compiled torch --batches 64 --dtypes float32 bfloat16"
    assert "torch" in ops.COMPILED
    parser = models.make_parser()
    flags = ["--device", "cuda", *_script_flags("models_args"), "--reps", "3", "--warmup", "1"]
    args = models.resolve(parser, parser.parse_args(flags))
    runs = {(s["model"], s["batch"], s["mode"], s["amp"]) for s in models.plan(args)}
    assert runs == {
        (model, batch, "eager", "bf16")
        for model in ("rednet50", "resnet50", models.YARDSTICK)
        for batch in (64, 128)
    }
    assert len(models.plan(args)) == len(runs)  # one process each: the budget's share


@pytest.mark.slow
def test_end_to_end_into_one_folder(tmp_path):
    out = tmp_path / "results"
    # --no-layers: the layer table is the CPU's alone (test_bench runs it); on a GPU the script
    # measures the op's rows, and here the layers, like the numba_cpu rows, would only add Numba
    # compilations (the script runs a fresh copy of the tree, whose kernels miss the cache): the
    # torch backend, eager and compiled, is enough to see both kinds of row
    done = _run(
        str(out),
        REPS="1",
        BENCH_ARGS="--shapes 16x9x3 --warmup 1 --batches 2 --dtypes float32 --no-layers "
        "--backends torch --compiled torch",
        TESTS="tests/test_ops_gpu.py",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert "gpu-tests: ok" in summary and "bench-ops: ok" in summary
    assert "models: " in summary  # ok on a GPU, else skipped with its reason
    text = (out / "benchmarks.md").read_text()
    section = "involution.bench.ops" + (".gpu" if "gpu none" not in summary else "")
    assert markers(section)[0] in text
    assert "| 2, 16, 9x9, 3, 1 |" in text
    for name in ("torch", "torch.compile(torch)"):  # the torch backend, eager and compiled
        assert f"| 2, 16, 9x9, 3, 1 | float32 | {name} |" in text
    for name in ("reference", "numba_cpu"):  # left out by --backends
        assert f"| 2, 16, 9x9, 3, 1 | float32 | {name} |" not in text
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files
