"""Static resource report of the CUDA kernels: registers, spills, shared memory and occupancy.

    python -m involution.bench.cuda_resources [--kinds float32 ...] [--archs sm_80 sm_90]
                                              [--output docs/benchmarks.md] [--json PATH]
                                              [--ptxas PATH]

No GPU is needed. Every kernel of ``involution.kernels.cuda`` (forward, grad_input, grad_kernel),
in every storage kind the ``numba_cuda`` backend launches it with, is compiled to PTX by
numba-cuda with the signatures the launches use (``kernels.cuda.signatures``), and that PTX is
assembled by the CUDA toolkit's ``ptxas -v`` for each architecture, which is what the driver does
with it at the first launch. ``ptxas -v`` reports registers per thread, spill stores and loads,
the stack frame and shared memory; from those and the launch configuration of
``kernels.cuda.launch_config`` follows the theoretical occupancy, computed as CUDA's
``cuda_occupancy.h`` does (registers are allocated per warp in units of 256 and split over the
SM's four sub-partitions; blocks are limited by warps, registers, shared memory and the block cap).

The records go to a JSON file (values, toolkit versions, date, command) and a markdown section of
the output file (between this report's own markers), leaving the other sections as they are.
Exit status 1 when any kernel spills (after writing the report), 2 when ptxas cannot be found.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from involution.bench import sections

SECTION = "involution.bench.cuda_resources"
KERNELS = ("forward", "grad_input", "grad_kernel")


@dataclass(frozen=True)
class SmLimits:
    """Per-SM resources of one architecture (CUDA programming guide, compute capability table;
    allocation rules as in the toolkit's cuda_occupancy.h)."""

    cc: tuple[int, int]
    max_threads: int = 2048
    max_warps: int = 64
    max_blocks: int = 32
    registers: int = 65536
    registers_per_block: int = 65536
    register_unit: int = 256  # registers are allocated per warp in multiples of this
    sub_partitions: int = 4  # each holds a quarter of the register file and whole warps
    max_registers_per_thread: int = 255
    shared: int = 0  # shared memory per SM at the largest carveout, bytes
    shared_per_block: int = 0  # the most one block may use (opt-in), bytes
    shared_unit: int = 128
    shared_reserved_per_block: int = 1024  # the driver's own use, counted for every block


ARCHS = {
    "sm_80": SmLimits(cc=(8, 0), shared=164 * 1024, shared_per_block=163 * 1024),
    "sm_90": SmLimits(cc=(9, 0), shared=228 * 1024, shared_per_block=227 * 1024),
}


# ------------------------------------------------------------------------------------------------
# The toolkit
# ------------------------------------------------------------------------------------------------


def _executable(path: str | os.PathLike | None) -> str | None:
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return str(path)
    return None


def _toolkit_ptxas_candidates() -> list[str]:
    """ptxas beside the toolkit numba-cuda compiles with (its NVVM) and in NVIDIA's wheels."""
    found = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            found.append(os.path.join(os.environ[var], "bin", "ptxas"))
    try:
        from numba.cuda.cuda_paths import get_cuda_paths

        nvvm = get_cuda_paths()["nvvm"].info  # <toolkit>/nvvm/lib64/libnvvm.so or <toolkit>/lib/...
        if nvvm:
            for up in Path(nvvm).parents[:3]:
                found.append(str(up / "bin" / "ptxas"))
    except Exception:  # noqa: BLE001 - numba-cuda absent or its search failed: other places remain
        pass
    for entry in sys.path:  # nvidia-cuda-nvcc wheels: nvidia/cu13/bin, nvidia/cuda_nvcc/bin
        found += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "bin", "ptxas")))
    return found


def find_ptxas(explicit: str | None = None) -> str | None:
    """The ptxas to use: ``explicit``, else $PTXAS, else the one on PATH, else the toolkit's."""
    if explicit:
        return _executable(explicit)
    for candidate in (os.environ.get("PTXAS"), shutil.which("ptxas"), *_toolkit_ptxas_candidates()):
        if _executable(candidate):
            return str(candidate)
    return None


def ptxas_version(ptxas: str) -> str:
    """``ptxas --version``'s release line, e.g. 'release 13.0, V13.0.88'."""
    text = subprocess.run([ptxas, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release [^\n]*", text)
    return match.group(0).strip() if match else text.strip().splitlines()[-1]


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("numba", "numba-cuda"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    try:
        from numba.cuda.cudadrv import nvvm

        out["nvvm"] = ".".join(map(str, nvvm.NVVM().get_version()))
    except Exception:  # noqa: BLE001 - reported as unknown
        out["nvvm"] = None
    return out


# ------------------------------------------------------------------------------------------------
# Compile, assemble, parse
# ------------------------------------------------------------------------------------------------


def compile_ptx(kind: str, name: str, cc: tuple[int, int]) -> str:
    """PTX of kernel ``name`` for storage ``kind``, as numba-cuda generates it for ``cc``."""
    from numba import cuda

    from involution.kernels import cuda as kernels

    fn = kernels.python_functions(kind)[name]
    ptx, _ = cuda.compile_ptx(fn, kernels.signatures(kind)[name], cc=cc)
    return ptx


def assemble(ptx: str, arch: str, ptxas: str) -> str:
    """``ptxas -v`` of ``ptx`` for ``arch`` (e.g. 'sm_90'): its resource lines."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        done = subprocess.run(
            [ptxas, "-v", f"--gpu-name={arch}", str(src), "-o", str(Path(tmp) / "kernel.cubin")],
            capture_output=True,
            text=True,
        )
    text = done.stdout + done.stderr
    if done.returncode:
        raise RuntimeError(f"ptxas failed for {arch} (exit {done.returncode}): {text.strip()}")
    return text


@dataclass
class EntryResources:
    """What ptxas -v says about one kernel (entry function) for one architecture."""

    entry: str
    arch: str
    registers: int
    stack_frame: int
    spill_stores: int
    spill_loads: int
    shared: int
    barriers: int


_ENTRY_RE = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_FRAME_RE = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_USED_RE = re.compile(r"Used (\d+) registers")
_SMEM_RE = re.compile(r"(\d+) bytes smem")
_BARRIERS_RE = re.compile(r"used (\d+) barriers")


def parse_ptxas(text: str) -> list[EntryResources]:
    """Every entry function's resources in ``ptxas -v`` output; raises ValueError when an entry
    lacks its register or stack/spill line (a format this parser does not know)."""
    blocks = _ENTRY_RE.split(text)
    # split -> [preamble, entry, arch, body, entry, arch, body, ...]
    found = []
    for entry, arch, body in zip(blocks[1::3], blocks[2::3], blocks[3::3]):
        used, frame = _USED_RE.search(body), _FRAME_RE.search(body)
        if used is None or frame is None:
            raise ValueError(f"ptxas output for {entry} ({arch}) has no register/spill line")
        smem, barriers = _SMEM_RE.search(body), _BARRIERS_RE.search(body)
        found.append(
            EntryResources(
                entry=entry,
                arch=arch,
                registers=int(used.group(1)),
                stack_frame=int(frame.group(1)),
                spill_stores=int(frame.group(2)),
                spill_loads=int(frame.group(3)),
                shared=int(smem.group(1)) if smem else 0,
                barriers=int(barriers.group(1)) if barriers else 0,
            )
        )
    return found


# ------------------------------------------------------------------------------------------------
# Occupancy
# ------------------------------------------------------------------------------------------------


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def occupancy(registers: int, threads: int, shared: int, limits: SmLimits) -> dict:
    """Resident blocks and warps per SM, and the occupancy (resident / maximum warps), for blocks
    of ``threads`` threads using ``registers`` per thread and ``shared`` bytes of static shared
    memory; ``limited_by`` names the binding limits."""
    warps_per_block = -(-threads // 32)
    regs_per_warp = _round_up(registers * 32, limits.register_unit)
    by = {
        "warps": limits.max_warps // warps_per_block,
        "blocks": limits.max_blocks,
    }
    # A block must fit the per-block register limit, with its warps rounded up to the
    # sub-partitions (the hardware check), and each sub-partition holds whole warps only.
    fits = (
        registers <= limits.max_registers_per_thread
        and regs_per_warp * _round_up(warps_per_block, limits.sub_partitions)
        <= limits.registers_per_block
    )
    warps_by_regs = (
        (limits.registers // limits.sub_partitions) // regs_per_warp * limits.sub_partitions
    )
    by["registers"] = warps_by_regs // warps_per_block if fits else 0
    shared_per_block = _round_up(shared + limits.shared_reserved_per_block, limits.shared_unit)
    by["shared memory"] = (
        limits.shared // shared_per_block if shared <= limits.shared_per_block else 0
    )
    blocks = min(by.values())
    warps = blocks * warps_per_block
    return {
        "threads_per_block": threads,
        "registers_per_warp": regs_per_warp,
        "blocks_per_sm": blocks,
        "warps_per_sm": warps,
        "occupancy": warps / limits.max_warps,
        "limited_by": [name for name, value in by.items() if value == blocks],
        "blocks_by": by,
    }


def launch_threads() -> int:
    """Threads per block of every launch big enough to fill blocks (all real layer shapes)."""
    from involution.kernels import cuda as kernels

    return kernels.launch_config(1 << 30)[1]


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def collect(kinds: list[str], archs: list[str], ptxas: str) -> list[dict]:
    """One record per (kernel, storage kind, architecture)."""
    from involution.kernels import cuda as kernels

    threads = launch_threads()
    records = []
    for kind in kinds:
        accumulate = "float64" if kind == "float64" else "float32"
        storage = "int16 (bfloat16 bits)" if kind == "bfloat16" else kind
        for name in KERNELS:
            for arch in archs:
                limits = ARCHS[arch]
                entries = parse_ptxas(assemble(compile_ptx(kind, name, limits.cc), arch, ptxas))
                if len(entries) != 1:
                    raise RuntimeError(f"{kind} {name} {arch}: {len(entries)} entries, expected 1")
                res = entries[0]
                record = {
                    "kernel": name,
                    "kind": kind,
                    "storage": storage,
                    "accumulator": accumulate,
                    "arch": arch,
                    **{k: v for k, v in asdict(res).items() if k not in ("arch",)},
                    **occupancy(res.registers, threads, res.shared, limits),
                    "channel_block": kernels.CHANNEL_BLOCK if name != "grad_kernel" else None,
                }
                records.append(record)
                print(
                    f"[cuda-report] {name:11s} {kind:8s} {arch}: {res.registers:3d} registers, "
                    f"spills {res.spill_stores}/{res.spill_loads} B, stack {res.stack_frame} B, "
                    f"occupancy {record['occupancy']:.0%}",
                    flush=True,
                )
    return records


def spills(records: list[dict]) -> list[dict]:
    """The records whose kernel spills registers or keeps a stack frame (local memory)."""
    return [r for r in records if r["spill_stores"] or r["spill_loads"] or r["stack_frame"]]


def render(document: dict) -> str:
    """The markdown section of a report document (as written to JSON)."""
    tk = document["toolkit"]
    threads = document["records"][0]["threads_per_block"] if document["records"] else "-"
    lines = [
        "## CUDA kernels: registers, spills and occupancy (static, no GPU)",
        "",
        f"Generated {document['date'][:10]} with `{document['command']}` (`make cuda-report`); "
        f"records in `{document['json']}`.",
        "",
        f"- Toolkit: ptxas {tk['ptxas_version']} (`{tk['ptxas']}`), NVVM {tk['nvvm']}; "
        f"numba {tk['numba']}, numba-cuda {tk['numba-cuda']}, Python {tk['python']}",
        "- Method: each kernel compiled to PTX by `numba.cuda.compile_ptx` with the signatures "
        "the `numba_cuda` launches use, assembled by `ptxas -v --gpu-name=<arch>` (what the "
        "driver does with the PTX at the first launch). Occupancy is theoretical, at the launch "
        f"configuration of `kernels.cuda.launch_config` ({threads} threads per block for every "
        "real layer shape; only jobs under 256 threads launch smaller blocks), computed as "
        "`cuda_occupancy.h` does: registers per warp rounded up to 256 and split over 4 "
        "sub-partitions, 65536 registers, 64 warps (2048 threads) and 32 blocks per SM, 1 KiB "
        "of shared memory reserved per block (164 KiB per SM on sm_80, 228 KiB on sm_90).",
        "",
        "| kernel | storage kind | arch | registers / thread | spill stores (B) | "
        "spill loads (B) | stack frame (B) | shared (B) | blocks / SM | warps / SM | "
        "occupancy | limited by |",
        "|---|---|---|" + "---:|" * 8 + "---|",
    ]
    for r in document["records"]:
        lines.append(
            f"| {r['kernel']} | {r['kind']} | {r['arch']} | {r['registers']} | "
            f"{r['spill_stores']} | {r['spill_loads']} | {r['stack_frame']} | {r['shared']} | "
            f"{r['blocks_per_sm']} | {r['warps_per_sm']} | {r['occupancy']:.1%} | "
            f"{', '.join(r['limited_by'])} |"
        )
    bad = spills(document["records"])
    lines += [
        "",
        "Spills: none (every kernel keeps its accumulators in registers)."
        if not bad
        else "Spills: "
        + "; ".join(
            f"{r['kernel']} {r['kind']} {r['arch']} ({r['spill_stores']} B stored, "
            f"{r['spill_loads']} B loaded, {r['stack_frame']} B stack)"
            for r in bad
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from involution.kernels import cuda as kernels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=kernels.KINDS, default=list(kernels.KINDS))
    parser.add_argument("--archs", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS))
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument(
        "--json", type=Path, default=None, help="default: cuda_resources.json beside --output"
    )
    parser.add_argument("--ptxas", default=None, help="default: $PTXAS, PATH, the CUDA toolkit")
    args = parser.parse_args(argv)
    ptxas = find_ptxas(args.ptxas)
    if ptxas is None:
        where = (
            f"--ptxas {args.ptxas} is not an executable"
            if args.ptxas
            else ("ptxas not found on PATH, $PTXAS, $CUDA_HOME/bin or beside numba-cuda's NVVM")
        )
        print(
            f"cuda-report: {where}; install the CUDA toolkit or the nvidia-cuda-nvcc wheel",
            file=sys.stderr,
        )
        return 2
    json_path = args.json or args.output.parent / "cuda_resources.json"
    records = collect(args.kinds, args.archs, ptxas)
    document = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m involution.bench.cuda_resources"
        + (" " + shlex.join(argv) if argv else ""),
        "json": str(json_path),
        "toolkit": {"ptxas": ptxas, "ptxas_version": ptxas_version(ptxas), **_versions()},
        "limits": {arch: asdict(ARCHS[arch]) for arch in args.archs},
        "records": records,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=1) + "\n")
    sections.write_section(args.output, render(document), SECTION)
    print(f"[cuda-report] wrote {json_path} and the section of {args.output}")
    bad = spills(records)
    if bad:
        print(f"cuda-report: {len(bad)} kernel builds spill to local memory", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
