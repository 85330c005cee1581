"""The static CUDA resource report (``python -m involution.bench.cuda_resources``).

- the ptxas -v parser on real ptxas 13.0 outputs captured in tests/data/ptxas/ (a kernel of ours
  for sm_90; grad_input float64 forced to 32 registers with -maxrregcount, so that it spills; a
  small kernel with a shared-memory tile);
- the occupancy arithmetic against hand counts, including the sub-partition rule;
- every kernel in every storage kind, assembled by ptxas and linked by nvJitLink (the launch
  path) for sm_80 and sm_90: no spills, no stack frame;
- the command: JSON records plus its own section of the markdown file;
- on a real GPU: the kernels as the dispatcher compiles them for that device use no local memory.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from involution.bench import cuda_resources as cr
from involution.bench import report
from involution.bench.sections import markers, read_sections, write_section
from involution.kernels import cuda as kernels

DATA = Path(__file__).parent / "data" / "ptxas"
PTXAS = cr.find_ptxas()
needs_ptxas = pytest.mark.skipif(PTXAS is None, reason="no ptxas (CUDA toolkit) on this machine")


@pytest.mark.parametrize(
    ("name", "want"),
    [
        (
            "forward-float32-sm_90.txt",
            {"arch": "sm_90", "registers": 84, "stack_frame": 0, "spill_stores": 0,
             "spill_loads": 0, "shared": 0, "barriers": 0},
        ),
        (
            "grad_input-float64-sm_80-maxrregcount32.txt",
            {"arch": "sm_80", "registers": 32, "stack_frame": 360, "spill_stores": 580,
             "spill_loads": 696, "shared": 0, "barriers": 0},
        ),
        (
            "shared-tile-sm_80.txt",
            {"arch": "sm_80", "registers": 14, "stack_frame": 0, "spill_stores": 0,
             "spill_loads": 0, "shared": 1024, "barriers": 1},
        ),
    ],
)  # fmt: skip
def test_parser_reads_captured_ptxas_output(name, want):
    (entry,) = cr.parse_ptxas((DATA / name).read_text())
    assert {k: getattr(entry, k) for k in want} == want
    assert entry.entry.startswith("_ZN")
    assert bool(cr.spills([{**want}])) == (want["spill_stores"] > 0)


def test_parser_refuses_an_entry_without_its_resource_lines():
    text = (DATA / "forward-float32-sm_90.txt").read_text()
    cut = "\n".join(line for line in text.splitlines() if "Used" not in line)
    with pytest.raises(ValueError, match="no register/spill line"):
        cr.parse_ptxas(cut)


SM80, SM90 = cr.ARCHS["sm_80"], cr.ARCHS["sm_90"]


@pytest.mark.parametrize(
    ("registers", "threads", "shared", "limits", "blocks", "occupancy", "limited_by"),
    [
        # 76 regs -> 2432 per warp -> 2560 allocated; 16384 per sub-partition / 2560 = 6 warps,
        # x4 = 24 warps = 3 blocks of 8 warps
        (76, 256, 0, SM80, 3, 24 / 64, ["registers"]),
        (48, 256, 0, SM90, 5, 40 / 64, ["registers"]),  # 1536 per warp: 10 x 4 = 40 warps
        # 96 regs, one-warp blocks: whole-SM division would allow 65536 / 3072 = 21 warps, the
        # sub-partitions hold 16384 / 3072 = 5 each, 20 in all
        (96, 32, 0, SM80, 20, 20 / 64, ["registers"]),
        (16, 256, 0, SM90, 8, 1.0, ["warps"]),
        (16, 32, 0, SM80, 32, 32 / 64, ["blocks"]),
        # 48 KiB + 1 KiB reserved per block: 164 KiB / 49 KiB = 3 blocks on sm_80, 4 on sm_90
        (16, 256, 48 * 1024, SM80, 3, 24 / 64, ["shared memory"]),
        (16, 256, 48 * 1024, SM90, 4, 32 / 64, ["shared memory"]),
        (256, 256, 0, SM80, 0, 0.0, ["registers"]),  # over the 255-register limit: no launch
    ],
)
def test_occupancy_hand_counts(registers, threads, shared, limits, blocks, occupancy, limited_by):
    got = cr.occupancy(registers, threads, shared, limits)
    assert got["blocks_per_sm"] == blocks
    assert got["occupancy"] == pytest.approx(occupancy)
    assert got["limited_by"] == limited_by


def test_launch_threads_follow_the_launch_config():
    assert cr.launch_threads() == kernels.THREADS_PER_BLOCK


@pytest.mark.slow
@needs_ptxas
def test_no_kernel_spills():
    """Every kernel x storage kind x {sm_80, sm_90}: registers only, no local memory."""
    records = cr.collect(list(kernels.KINDS), ["sm_80", "sm_90"], PTXAS)
    assert len(records) == len(kernels.KINDS) * len(cr.KERNELS) * 2
    assert cr.spills(records) == [], "kernels spill to local memory"
    for r in records:
        assert 0 < r["registers"] <= 255 and r["occupancy"] > 0, r
        if cr.have_nvjitlink():  # the launch path's build is checked as well
            assert r["lto"] is not None and 0 < r["lto"]["registers"] <= 255, r


@needs_ptxas
def test_report_follows_the_dispatcher_options_and_catches_spills(monkeypatch):
    """A register cap on the launched kernels reaches ptxas, and the spills it forces show."""
    real = kernels.get_kernels

    def capped(kind):
        out = {}
        for name, dispatcher in real(kind).items():
            out[name] = SimpleNamespace(
                targetoptions={**dispatcher.targetoptions, "max_registers": 32}
            )
        return out

    monkeypatch.setattr(kernels, "get_kernels", capped)
    records = cr.collect(["float64"], ["sm_80"], PTXAS)
    assert all(r["registers"] <= 32 for r in records)
    assert "grad_input" in {r["kernel"] for r in cr.spills(records)}


@needs_ptxas
def test_command_writes_records_and_its_section(tmp_path):
    out = tmp_path / "benchmarks.md"
    write_section(out, "the operator table", "involution.bench.ops")
    argv = ["--kinds", "float32", "--archs", "sm_90", "--no-lto", "--output", str(out)]
    assert cr.main(argv) == 0
    document = report.read_records(tmp_path / "cuda_resources.json")
    meta, rows = document["meta"], document["rows"]
    assert meta["benchmark"] == "cuda_resources" and meta["machine"] and meta["date"]
    assert meta["command"].endswith(" ".join(argv))
    assert meta["versions"]["ptxas"].startswith("release ") and meta["ptxas"] == PTXAS
    assert [(r["kernel"], r["kind"], r["arch"]) for r in rows] == [
        (name, "float32", "sm_90") for name in cr.KERNELS
    ]
    text = out.read_text()
    begin, end = markers(cr.SECTION)
    assert "the operator table" in text and text.count(begin) == 1 and text.count(end) == 1
    lines = [line for line in text.split(begin)[1].splitlines() if line.startswith("| forward ")]
    assert len(lines) == 1 and "| float32 | sm_90 |" in lines[0]
    assert rows[0]["lto"] is None and "(LTO link)" not in text
    assert "Spills: none" in text
    # --render: the same section again from the records alone, no ptxas needed
    out.write_text("# Benchmarks\n")
    assert cr.main(["--render", "--ptxas", str(tmp_path / "nope"), "--output", str(out)]) == 0
    assert read_sections(out.read_text()) == {cr.SECTION: read_sections(text)[cr.SECTION]}
    # the notebooks read operator timings from the operator records only: none written here
    from involution.analysis import BenchmarksUnavailableError, load_benchmarks

    with pytest.raises(BenchmarksUnavailableError, match="benchmarks.ops.json does not exist"):
        load_benchmarks(out, fresh_if_missing=False)


def test_published_section_is_rendered_from_its_records():
    """docs/benchmarks.md's CUDA section is what docs/cuda_resources.json renders."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    records = report.read_records(docs / "cuda_resources.json")
    published = read_sections((docs / "benchmarks.md").read_text())[cr.SECTION]
    assert cr.render(records["meta"], records["rows"]) == published


def test_render_of_malformed_records_names_the_file(tmp_path, capsys):
    records = tmp_path / "cuda_resources.json"
    records.write_text('{"meta": {}, "rows": []')
    with pytest.raises(SystemExit) as exited:
        cr.main(["--render", "--output", str(tmp_path / "benchmarks.md")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and f"argument --render: {records} is not JSON" in err
    records.unlink()
    with pytest.raises(SystemExit):
        cr.main(["--render", "--output", str(tmp_path / "benchmarks.md")])
    assert f"no records at {records}" in capsys.readouterr().err
    assert not (tmp_path / "benchmarks.md").exists()


def test_command_without_ptxas_says_so(tmp_path, capsys):
    out = tmp_path / "benchmarks.md"
    assert cr.main(["--ptxas", str(tmp_path / "nope"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ptxas" in err[0] and "not an executable" in err[0]
    assert not out.exists()


def test_find_ptxas_honours_the_environment(tmp_path, monkeypatch):
    fake = tmp_path / "ptxas"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PTXAS", str(fake))
    assert cr.find_ptxas() == str(fake)
    monkeypatch.setenv("PTXAS", str(tmp_path / "missing"))
    assert cr.find_ptxas() != str(tmp_path / "missing")


@pytest.mark.gpu
def test_dispatcher_kernels_use_no_local_memory_on_the_device():
    if not torch.cuda.is_available() or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("needs a CUDA device")
    from numba import cuda

    cc = cuda.get_current_device().compute_capability
    arch = f"sm_{cc[0]}{cc[1]}"
    for kind in kernels.KINDS:
        sigs = kernels.signatures(kind)
        for name, dispatcher in kernels.get_kernels(kind).items():
            compiled = dispatcher.compile(sigs[name])
            assert compiled.local_mem_per_thread == 0, (kind, name, arch)
            want = _static_registers(kind, name, cc)
            if want is not None and compiled.regs_per_thread != want:
                warnings.warn(
                    f"{name} {kind} on {arch}: the loaded kernel uses {compiled.regs_per_thread} "
                    f"registers, the static build {want}",
                    stacklevel=1,
                )


def _static_registers(kind: str, name: str, cc: tuple[int, int]) -> int | None:
    """Registers of the static build that matches the launch (LTO link or ptxas)."""
    arch = f"sm_{cc[0]}{cc[1]}"
    options, flags = cr.jit_options(kind, name)
    if cr.launches_with_lto(kind, name):
        cap = kernels.get_kernels(kind)[name].targetoptions.get("max_registers")
        log = cr.link_ltoir(cr.compile_ltoir(kind, name, cc, **options), arch, cap)
    elif PTXAS is not None:
        log = cr.assemble(cr.compile_ptx(kind, name, cc, **options), arch, PTXAS, flags)
    else:
        return None
    (entry,) = cr.parse_ptxas(log)
    return entry.registers
