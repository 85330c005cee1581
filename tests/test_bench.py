"""``make bench-ops`` end to end on a tiny shape: the JSON records and the section rendered from
them (the op table with its roofline columns and the layer table), that it replaces only its own
section of the output file (runs in a subprocess because the benchmark changes glibc's heap
settings for its whole process) and that ``--render`` rebuilds the section from the records
alone; the roofline's floors and hand counts, the GPU columns and targets from given timings;
the records loader's one-line errors, and the refusal of bad options."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from involution.bench import ops, report
from involution.bench.ops import BEGIN, END, write_section
from involution.bench.sections import read_sections


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
            "--batches",
            "8",
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


@pytest.fixture(
    scope="module",
    params=[("steady", "Heap: steady"), ("default", "Heap: glibc defaults")],
    ids=lambda param: param[0],
)
def bench_run(request, tmp_path_factory) -> tuple[Path, str]:
    """A run with each heap setting (steady: the default) into a file that holds another
    benchmark's text: (its folder, what its section says of the heap). The table and render tests
    read it."""
    heap, says = request.param
    root = tmp_path_factory.mktemp(f"bench-{heap}")
    (root / "benchmarks.md").write_text("# Benchmarks\n\nkept by another benchmark\n")
    _bench(root, "--heap", heap)
    return root, says


def test_bench_ops_writes_its_table(bench_run: tuple[Path, str]) -> None:
    root, says = bench_run
    text = (root / "benchmarks.md").read_text()
    assert "kept by another benchmark" in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert says in text
    op_table, parts_table = text.split("Where the numba_cpu step's time goes")
    rows = [line for line in op_table.splitlines() if line.startswith("| 8, 16, 9x9, 3, 1 |")]
    names = [row.split("|")[3].strip() for row in rows]
    assert names == [
        "depthwise conv2d",
        "reference",
        "numba_cpu",
        "numba_cpu, channels_last",
        "torch",
    ]
    for row in rows:
        median = row.split("|")[4].strip()
        assert float(median) > 0, row
        cells = [cell.strip() for cell in row.split("|")[8:12]]  # the roofline's four columns
        assert all(float(cell) > 0 for cell in cells), row
    assert "numba_cpu" in text.split("Target")[1]  # the verdict line for the one shape
    # the numba_cpu steps cut into their three ops: a row each, every time above zero
    parts = [line for line in parts_table.splitlines() if line.startswith("| 8, 16, 9x9, 3, 1 |")]
    assert [row.split("|")[3].strip() for row in parts] == names[2:4]
    for row in parts:
        assert all(float(cell.split()[0]) > 0 for cell in row.split("|")[4:8]), row
    assert "x the roofline floor" in text.split("Target")[1]
    layers = [line for line in text.splitlines() if line.startswith("| 8, 16, 9x9, 3 |")]
    assert [(row.split("|")[2].strip(), row.split("|")[3].strip()) for row in layers] == [
        (fmt, name)
        for fmt in ("NCHW", "channels_last")
        for name in (
            "Involution2d",
            "Involution2d, unfused (kernel kept)",
            "Involution2d, unfused, recomputed (previous default)",
            "conv 3x3",
            "depthwise conv 7x7",
        )
    ]
    assert "Involution2d" in text.split("Targets (Involution2d")[1]
    assert "peak tensors" in text.split("Targets (Involution2d")[1]
    for row in layers:  # every layer row has its tensors' peak (column 8), above zero
        assert float(row.split("|")[7].strip()) > 0, row
    records = report.read_records(root / "benchmarks.ops.json")
    meta = records["meta"]
    assert meta["benchmark"] == "ops" and meta["device"] == "cpu" and meta["reps"] == 2
    assert meta["command"].startswith("python -m involution.bench.ops --device cpu")
    assert meta["machine"] and meta["versions"]["torch"] == torch.__version__ and meta["date"]
    assert says.split(": ")[1] in meta["heap"]
    assert meta["timing"] == ops.PRIMED and f"Timing: {ops.PRIMED}." in text
    assert [r["name"] for r in records["rows"]] == names
    assert all(r["median"] > 0 and r["min"] <= r["median"] for r in records["rows"])
    for r in records["rows"]:  # the op's breakdown rides on its own rows, and only there
        if r["name"].startswith("numba_cpu"):
            assert sorted(r["parts"]) == sorted(ops.PARTS) and min(r["parts"].values()) > 0
        else:
            assert "parts" not in r
    assert len(records["layers"]) == 10 and meta["peaks"]["macs_per_s"] > 0
    assert all(r["tensor_peak"] > 0 for r in records["layers"])


def test_render_rebuilds_the_section_from_the_records(
    bench_run: tuple[Path, str], tmp_path: Path
) -> None:
    """Writer -> JSON -> markdown: ``--render`` gives back the section the run wrote, byte for byte,
    and leaves the other sections alone."""
    root, _ = bench_run
    section = read_sections((root / "benchmarks.md").read_text())[ops.SECTION]
    shutil.copy(root / "benchmarks.ops.json", tmp_path)  # edited below
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- BEGIN other -->\nkept\n<!-- END other -->\n")
    ops.main(["--render", "--output", str(out)])
    found = read_sections(out.read_text())
    assert found == {"other": "kept\n", ops.SECTION: section}
    records = json.loads((tmp_path / "benchmarks.ops.json").read_text())
    records["rows"][0]["median"] = 1.5  # an edited record shows in the next rendering
    (tmp_path / "benchmarks.ops.json").write_text(json.dumps(records))
    ops.main(["--render", "--output", str(out)])
    assert "| depthwise conv2d | 1500.00 |" in read_sections(out.read_text())[ops.SECTION]


def test_published_section_is_rendered_from_its_records() -> None:
    """docs/benchmarks.md's operator section is what its records render (no hand edits)."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    records = report.read_records(docs / "benchmarks.ops.json")
    published = read_sections((docs / "benchmarks.md").read_text())[ops.SECTION]
    rendered = ops.render(records["meta"], records["rows"], records.get("layers"))
    assert rendered.rstrip() + "\n" == published


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "is not JSON (Expecting property name"),
        ("[1, 2]", "holds a JSON list; expected an object"),
        ('{"rows": []}', "lacks a 'meta' object and a 'rows' list"),
        ('{"meta": {"date": "x"}, "rows": []}', "meta lacks benchmark, command, machine"),
    ],
)
def test_malformed_records_are_one_line_naming_the_file(
    tmp_path: Path, capsys, text: str, says: str
) -> None:
    path = tmp_path / "benchmarks.ops.json"
    path.write_text(text)
    with pytest.raises(report.RecordsError) as error:
        report.read_records(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path)) and says in message
    with pytest.raises(SystemExit) as exit_:
        ops.main(["--render", "--output", str(tmp_path / "benchmarks.md")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --render" in err and str(path) in err and says in err


def test_render_without_records_says_where_it_looked(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        ops.main(["--render", "--output", str(tmp_path / "b.md")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"no records at {tmp_path / 'b.ops.json'}" in err
    assert not (tmp_path / "b.md").exists()


def test_write_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    path = tmp_path / "b.md"
    path.write_text("# Benchmarks\n\nintro\n")
    write_section(path, "first")
    path.write_text(path.read_text() + "\n## Another benchmark\n\ntail\n")
    write_section(path, "second")
    text = path.read_text()
    assert "first" not in text and "second" in text
    assert text.index("intro") < text.index(BEGIN) < text.index("second") < text.index("tail")


def test_bench_ops_batches_and_dtypes(tmp_path: Path) -> None:
    """bfloat16 rows hold the candidates that run it on the CPU (numba_cpu does not, torch
    does)."""
    text = _bench(tmp_path, "--batches", "2", "--dtypes", "float32", "bfloat16", "--no-layers")
    op_table = text.split("Where the numba_cpu step's time goes")[0]
    rows = [
        line.split("|") for line in op_table.splitlines() if line.startswith("| 2, 16, 9x9, 3, 1 |")
    ]
    got = [(row[2].strip(), row[3].strip()) for row in rows]
    assert got == [
        ("float32", "depthwise conv2d"),
        ("float32", "reference"),
        ("float32", "numba_cpu"),
        ("float32", "numba_cpu, channels_last"),
        ("float32", "torch"),
        ("bfloat16", "depthwise conv2d"),
        ("bfloat16", "reference"),
        ("bfloat16", "torch"),
    ]
    assert all(float(row[4]) > 0 for row in rows)
    # the CPU table's roofline columns, not the GPU's bandwidth-only ones
    assert "| G multiply-adds/s | GB/s | roofline floor (ms) | vs floor |" in text
    assert "bandwidth floor (ms)" not in text and "The layer against" not in text


def test_roofline_hand_counts() -> None:
    from involution.bench import roofline

    found = roofline.Peaks(macs_per_s=100e9, bytes_per_s=50e9)
    # RedNet-50's first stage at batch 8: 3 * 49 * 64 * 56 * 56 * 8 multiply-adds
    assert roofline.op_macs(8, 64, 56, 7) == 236_027_904
    assert roofline.floor(236_027_904, 1e6, found) == pytest.approx(236_027_904 / 100e9)
    assert roofline.floor(1, 100e6, found) == pytest.approx(2e-3)  # bandwidth-bound
    # the layer: reduction 64 -> 16 and generation 16 -> 196, three passes each, + the op
    pixels = 8 * 56 * 56
    assert roofline.layer_macs(8, 64, 56, 7, 4, 16) == (
        3 * pixels * 64 * 16 + 3 * pixels * 196 * 16 + 236_027_904
    )
    assert roofline.layer_bytes(8, 64, 56, 16, 4) == 4 * pixels * (5 * 64 + 4 * 16)


def test_floor_bytes_hand_count() -> None:
    # N=64, C=64, 56x56, K=7, G=4. Feature map: 64*64*56*56 = 12,845,056 elements; kernel map:
    # 64*4*7*7*56*56 = 39,337,984. Forward: x + kernel read, out written (2 maps + 1 kernel map);
    # backward: grad_out + x + kernel read, grad_x + grad_kernel written (3 maps + 2 kernel maps).
    # 5 * 12,845,056 + 3 * 39,337,984 = 182,239,232 elements = 728,956,928 bytes in float32.
    assert ops.floor_bytes(64, 64, 56, 7, 4) == 728_956_928
    assert ops.floor_bytes(64, 64, 56, 7, 2) == 728_956_928 // 2
    # the stem: N=8, C=32, 112x112, K=3, G=2: maps of 3,211,264, kernel maps of 1,806,336
    assert ops.floor_bytes(8, 32, 112, 3, 4) == 4 * (5 * 3_211_264 + 3 * 1_806_336)


@pytest.mark.parametrize("primed", [False, True])
def test_interleaved_primes_each_timed_step_with_its_own(primed: bool) -> None:
    """Rounds of the candidates in turn; primed (the CPU), each timed step follows an untimed
    step of the same candidate, never another candidate's."""
    order: list[str] = []
    cands = [ops.Candidate(name, lambda name=name: order.append(name), "float32") for name in "ab"]
    ops._interleaved(cands, reps=2, warmup=1, sync=lambda: None, primed=primed)
    warm = ["a", "b"]
    rounds = ["a", "a", "b", "b"] * 2 if primed else ["a", "b"] * 2
    assert order == warm + rounds
    assert [len(cand.times) for cand in cands] == [2, 2]


def test_memory_is_measured_after_every_timing(monkeypatch, tmp_path: Path) -> None:
    """On the CPU no timing follows a memory measurement: ``peak_memory`` trims the heap
    (``malloc_trim``), after which a process never ran as fast (see ``ops._after_timings``).
    Both tables; nothing is run, only the order of the two phases is recorded."""
    events: list[str] = []

    def timing(cands, reps, warmup, sync, primed=False):
        events.append("time")
        for cand in cands:
            cand.times = [1e-3] * reps

    def memory(fn):
        events.append("memory")
        return 0

    monkeypatch.setattr(ops, "_interleaved", timing)
    monkeypatch.setattr(ops, "peak_memory", memory)
    monkeypatch.setattr(ops, "tensor_peak", lambda fn: 1)
    monkeypatch.setattr(ops.roofline, "peaks", lambda device: ops.roofline.Peaks(1e11, 4e10))
    out = tmp_path / "benchmarks.md"
    args = ["--device", "cpu", "--shapes", "16x9x3", "32x5x3", "--batches", "2", "--reps", "1"]
    ops.main([*args, "--no-compile", "--output", str(out)])
    assert events.count("time") == 2 + 2 * 2  # two op shapes, two layer shapes x two formats
    assert "memory" in events and "time" not in events[events.index("memory") :]
    records = report.read_records(tmp_path / "benchmarks.ops.json")
    assert len(records["rows"]) == 2 * 5 and len(records["layers"]) == 2 * 2 * 5


def _cand(name: str, *times: float, dtype: str = "bfloat16") -> ops.Candidate:
    return ops.Candidate(name, lambda: None, dtype, list(times))


def _gpu_meta(bandwidth: float) -> dict:
    return {
        **report.meta(ops.GPU_NAME, "python -m involution.bench.ops", torch.device("cpu")),
        "device": "cuda",
        "gpu": "NVIDIA H200",
        "load_start": "1 / 1 / 1",
        "load_end": "1 / 1 / 1",
        "reps": 3,
        "warmup": 1,
        "heap": None,
        "bandwidth": bandwidth,
        "cudnn": 91000,
    }


def test_gpu_rows_ratios_and_targets(tmp_path: Path) -> None:
    cands = [
        _cand("depthwise conv2d", 1.0e-3, 1.2e-3, 0.8e-3),
        _cand("reference", 10e-3, 10e-3),
        _cand("numba_cuda", 1.4e-3, 1.4e-3, 1.5e-3),
    ]
    bandwidth = 4e12
    rows = ops.shape_rows(cands, (64, 64, 56, 7), torch.bfloat16, bandwidth, with_reference=True)
    floor = 728_956_928 / 2 / bandwidth
    cuda_row = rows[2]
    assert cuda_row["ratio"] == pytest.approx(1.4)
    assert cuda_row["x_reference"] == pytest.approx(0.14)
    assert cuda_row["floor"] == pytest.approx(floor)
    assert cuda_row["x_floor"] == pytest.approx(1.4e-3 / floor)
    table = "\n".join(ops._table(rows, on_gpu=True))
    assert "| vs reference | bandwidth floor (ms) | vs floor |" in table
    assert f"| 1.40 | 0.14 | {floor * 1e3:.2f} | {1.4e-3 / floor:.2f} |" in table
    from involution.analysis.costs import load_benchmarks

    meta = _gpu_meta(bandwidth)
    out = tmp_path / "benchmarks.md"
    ops.save(out, meta, rows)  # what a GPU run writes: benchmarks.ops.gpu.json and its section
    read = load_benchmarks(tmp_path / "benchmarks.ops.gpu.json")  # what the notebooks read
    assert read["median_ms"].round(3).tolist() == [1.0, 10.0, 1.4]
    assert set(read["table"]) == {ops.title(meta)} and "(NVIDIA H200)" in ops.title(meta)
    section = read_sections(out.read_text())[ops.GPU_SECTION]
    assert "## Operator: involution forward+backward vs depthwise convolution (NVIDIA H200)" in (
        section
    )
    assert table in section and "measured in this run (4000 GB/s" in section
    (target,) = ops._gpu_summary(rows)
    assert target.startswith("- 64, 64, 56x56, 7, 4, bfloat16:")
    assert "x the bandwidth floor (MISSED)" in target  # 1.4 ms against a 0.09 ms floor
    assert "7.1x faster than the reference (ok)" in target
    assert "1.40x the depthwise conv (ok)" in target
    cpu_rows = ops.shape_rows(cands, (8, 64, 56, 7), torch.float32, None, with_reference=False)
    assert "x_reference" not in cpu_rows[2] and "x_floor" not in cpu_rows[2]
    assert ops._gpu_summary(cpu_rows) == []  # batch 8: no target


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--shapes", "20x9x3"], "--shapes"),
        (["--shapes", "16x9"], "--shapes"),
        (["--dtypes", "int8"], "--dtypes"),
        (["--batches", "0"], "--batches"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bench_ops_refuses_bad_options(argv, says, capsys, tmp_path: Path) -> None:
    out = tmp_path / "b.md"
    with pytest.raises(SystemExit) as exit_:
        ops.main([*argv, "--output", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert says in err, err
    assert not out.exists()


def test_sections_copy_between_files(tmp_path: Path, capsys) -> None:
    from involution.bench import sections

    source, target = tmp_path / "gpu.md", tmp_path / "docs.md"
    sections.write_section(source, "gpu table", "involution.bench.ops.gpu")
    sections.write_section(source, "cuda report", "involution.bench.cuda_resources")
    sections.write_section(target, "cpu table", "involution.bench.ops")
    sections.write_section(target, "old gpu table", "involution.bench.ops.gpu")
    (tmp_path / "gpu.ops.gpu.json").write_text('{"meta": "the gpu records"}')
    (tmp_path / "docs.ops.json").write_text('{"meta": "the cpu records"}')
    assert sections.main([str(source), str(target), "--only", "involution.bench.ops.gpu"]) == 0
    found = sections.read_sections(target.read_text())
    assert found == {
        "involution.bench.ops": "cpu table\n",
        "involution.bench.ops.gpu": "gpu table\n",
    }
    # the records the copied section was rendered from go with it; the others stay
    assert (tmp_path / "docs.ops.gpu.json").read_text() == '{"meta": "the gpu records"}'
    assert (tmp_path / "docs.ops.json").read_text() == '{"meta": "the cpu records"}'
    assert report.records_path(target, "ops.gpu") == tmp_path / "docs.ops.gpu.json"
    with pytest.raises(SystemExit):
        sections.main([str(source), str(target), "--only", "involution.bench.models"])
    assert "has no section involution.bench.models" in capsys.readouterr().err


def test_a_missed_op_target_says_where_it_stands_against_each_roof() -> None:
    peaks = {"macs_per_s": 100e9, "bytes_per_s": 50e9}
    row = {"shape": "8, 64, 56x56, 7, 4", "name": "numba_cpu", "ratio": 0.2, "x_floor": 5.0}
    # 1 G multiply-adds (10 ms at the peak) and 1 GB (20 ms at the bandwidth) in 100 ms
    row |= {"macs": 1e9, "bytes": 1e9, "macs_per_s": 1e10, "bytes_per_s": 1e10}
    (line,) = ops._summary([row], peaks)
    assert line == (
        "- 8, 64, 56x56, 7, 4, numba_cpu: 5.00x the roofline floor (MISSED: 10% of the matmul "
        "peak, 20% of the copy bandwidth, the floor set by traffic); 0.20x the depthwise conv"
    )
    (line,) = ops._summary([row | {"x_floor": 2.5}], peaks)
    assert "(met);" in line


def test_a_missed_op_target_says_where_the_step_spends_its_time() -> None:
    """With the step's three ops measured, the verdict line gives each one's time and share of
    the matmul peak and what the step spends around them."""
    peaks = {"macs_per_s": 100e9, "bytes_per_s": 50e9}
    row = {"shape": "8, 64, 56x56, 7, 4", "name": "numba_cpu", "ratio": 0.2, "x_floor": 5.0}
    row |= {"macs": 3e9, "bytes": 1e9, "macs_per_s": 3e10, "bytes_per_s": 1e10, "median": 0.1}
    row["dtype"] = "float32"
    # each op does 1 G multiply-adds: 10 ms at the peak
    row["parts"] = {"forward": 0.02, "grad_input": 0.025, "grad_kernel": 0.04}
    (line,) = ops._summary([row], peaks)
    assert line.endswith(
        "; forward, grad_input, grad_kernel 20.00 + 25.00 + 40.00 ms (50%, 40%, 25% of the "
        "matmul peak), 15.00 ms around them); 0.20x the depthwise conv"
    )
    row["floor"] = 0.03
    (table_row,) = ops._parts_table([row], peaks)[2:]
    assert table_row == (
        "| 8, 64, 56x56, 7, 4 | float32 | numba_cpu | 20.00 (50%) | 25.00 (40%) | 40.00 (25%) "
        "| 85.00 | 2.83 | 15.00 | 5.00 |"
    )


def test_the_op_parts_are_timed_but_make_no_rows_of_their_own() -> None:
    """``_part_steps`` cuts the numba_cpu step into its three ops on the step's own tensors; the
    rows of a shape carry their medians in the op's row, and the parts get no row."""
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    kern = torch.randn(2, 1, 3, 3, 5, 5, requires_grad=True)
    grad = torch.randn(2, 16, 5, 5)
    parts = ops._part_steps("numba_cpu", x, kern, grad, 1, "float32")
    assert [p.name for p in parts] == [f"numba_cpu: {name}" for name in ops.PARTS]
    assert all(p.part_of == "numba_cpu" for p in parts)
    for part in parts:  # each runs its op, recording nothing for autograd
        part.step()
    assert x.grad is None and kern.grad is None
    op = ops.Candidate("numba_cpu", lambda: None, "float32", [3e-3, 3e-3])
    for part, t in zip(parts, (1e-3, 1e-3, 5e-4)):
        part.times = [t]
    peaks = ops.roofline.Peaks(1e11, 4e10)
    (row,) = ops.shape_rows([op, *parts], (2, 16, 5, 3), torch.float32, peaks, False)
    assert row["name"] == "numba_cpu" and row["parts"] == {
        "forward": 1e-3,
        "grad_input": 1e-3,
        "grad_kernel": 5e-4,
    }


def test_tensor_peak_counts_the_storages_held_at_once() -> None:
    """The most bytes of tensor storage alive together during the call: a freed tensor stops
    counting, views count their storage once, tensors that existed before do not count."""
    from involution.bench.ops import tensor_peak

    before = torch.empty(10_000)

    def step():
        a = torch.empty(1000)  # 4000 bytes
        view = a[10:20]  # the same storage
        b = torch.empty(500)  # 6000 held
        del a, view
        c = torch.empty(250, dtype=torch.float64)  # 4000 held: b and c
        d = before + 1  # 40000 more at once: b, c, d
        del d
        return b, c

    assert tensor_peak(step) == 2000 + 2000 + 40_000
    assert tensor_peak(lambda: torch.empty(1000) * 2) == 8000  # the input and the product
