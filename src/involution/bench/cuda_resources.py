"""Static resource report of the CUDA kernels: registers, spills, shared memory and occupancy.

    python -m involution.bench.cuda_resources [--kinds float32 ...] [--archs sm_80 sm_90]
                                              [--output docs/benchmarks.md] [--json PATH]
                                              [--ptxas PATH] [--no-lto] [--render]

No GPU is needed. Every kernel of ``involution.kernels.cuda`` (forward, grad_input, grad_kernel),
in every storage kind the ``numba_cuda`` backend launches it with, is compiled by numba-cuda with
the signatures the launches use (``kernels.cuda.signatures``) and the code-generation options of
the dispatchers ``kernels.cuda.get_kernels`` returns (a register cap included), for each
architecture twice:

- to PTX, assembled by the CUDA toolkit's ``ptxas -v``;
- to LTO-IR, linked by nvJitLink with link-time optimisation, which is how numba-cuda builds a
  kernel at its first launch wherever nvJitLink is present (its ``-verbose`` log carries the same
  ptxas lines; the ``gpu`` test compares them with the kernel loaded on a real device).

From the registers of the build that runs and the launch configuration of
``kernels.cuda.launch_config`` follows the theoretical occupancy, computed as CUDA's
``cuda_occupancy.h`` does (registers are allocated per warp in units of 256 and split over the
SM's four sub-partitions; blocks are limited by warps, registers, shared memory and the block cap).

The records go to a JSON file (``cuda_resources.json`` beside the output: values, machine,
toolkit versions, date, command, in ``bench.report``'s records format) and the markdown section
rendered from them to the output file (between this report's own markers), leaving the other
sections as they are; ``--render`` compiles nothing and rebuilds the section from the records.
Exit status 1 when any kernel spills (after writing the report), 2 when ptxas cannot be found.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from involution.bench import report, sections

NAME = "cuda_resources"
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
    out["nvjitlink"] = None
    if have_nvjitlink():
        from cuda.bindings import nvjitlink

        out["nvjitlink"] = ".".join(map(str, nvjitlink.version()))
    return out


# ------------------------------------------------------------------------------------------------
# Compile, assemble, parse
# ------------------------------------------------------------------------------------------------


# The launched dispatchers' options that change code generation: passed on to compile_ptx (or,
# for a register cap, to ptxas), so that the report follows whatever get_kernels() compiles.
_PTX_OPTIONS = ("debug", "lineinfo", "fastmath", "opt", "forceinline", "launch_bounds")


def jit_options(kind: str, name: str) -> tuple[dict, list[str]]:
    """(compile_ptx keyword arguments, ptxas flags) matching the options of the dispatcher that
    ``kernels.cuda.get_kernels`` launches (creating it compiles nothing, so no GPU is needed)."""
    from involution.kernels import cuda as kernels

    options = kernels.get_kernels(kind)[name].targetoptions
    kwargs = {key: options[key] for key in _PTX_OPTIONS if options.get(key) is not None}
    flags = [f"--maxrregcount={options['max_registers']}"] if options.get("max_registers") else []
    return kwargs, flags


def launches_with_lto(kind: str, name: str) -> bool:
    """Whether the launched dispatcher links through nvJitLink with link-time optimisation."""
    from involution.kernels import cuda as kernels

    return bool(kernels.get_kernels(kind)[name].targetoptions.get("lto")) and have_nvjitlink()


def compile_ptx(kind: str, name: str, cc: tuple[int, int], **options) -> str:
    """PTX of kernel ``name`` for storage ``kind``, as numba-cuda generates it for ``cc``, with
    the launch signature and (``options``) the dispatcher's code-generation options."""
    from numba import cuda

    from involution.kernels import cuda as kernels

    fn = kernels.python_functions(kind)[name]
    ptx, _ = cuda.compile_ptx(fn, kernels.signatures(kind)[name], cc=cc, **options)
    return ptx


def assemble(ptx: str, arch: str, ptxas: str, flags: list[str] | None = None) -> str:
    """``ptxas -v`` of ``ptx`` for ``arch`` (e.g. 'sm_90'): its resource lines."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        cubin = str(Path(tmp) / "kernel.cubin")
        done = subprocess.run(
            [ptxas, "-v", f"--gpu-name={arch}", *(flags or []), str(src), "-o", cubin],
            capture_output=True,
            text=True,
        )
    text = done.stdout + done.stderr
    if done.returncode:
        raise RuntimeError(f"ptxas failed for {arch} (exit {done.returncode}): {text.strip()}")
    return text


def compile_ltoir(kind: str, name: str, cc: tuple[int, int], **options) -> bytes:
    """LTO-IR of kernel ``name`` for ``kind``: what numba-cuda hands nvJitLink at a launch."""
    from numba import cuda

    from involution.kernels import cuda as kernels

    fn = kernels.python_functions(kind)[name]
    sig = kernels.signatures(kind)[name]
    ltoir, _ = cuda.compile(fn, sig, device=False, abi="numba", output="ltoir", cc=cc, **options)
    return ltoir


def have_nvjitlink() -> bool:
    try:
        from numba.cuda.cudadrv.driver import _have_nvjitlink
    except ImportError:
        return False
    return bool(_have_nvjitlink())


def link_ltoir(ltoir: bytes, arch: str, max_registers: int | None = None) -> str:
    """nvJitLink's verbose log (ptxas -v lines) of linking ``ltoir`` for ``arch`` with link-time
    optimisation, the options numba-cuda's launch path uses."""
    from cuda.bindings import nvjitlink

    options = [f"-arch={arch}", "-lto", "-verbose"]
    if max_registers:
        options.append(f"-maxrregcount={max_registers}")
    handle = nvjitlink.create(len(options), options)
    try:
        nvjitlink.add_data(handle, nvjitlink.InputType.LTOIR, ltoir, len(ltoir), "kernel")
        try:
            nvjitlink.complete(handle)
        except nvjitlink.nvJitLinkError as exc:
            log = bytearray(nvjitlink.get_error_log_size(handle))
            nvjitlink.get_error_log(handle, log)
            raise RuntimeError(
                f"nvJitLink failed for {arch}: {log.decode(errors='replace')}"
            ) from exc
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
    finally:
        nvjitlink.destroy(handle)
    return log.decode(errors="replace").rstrip("\x00")


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


def the_entry(entries: list[EntryResources], kind: str, name: str, arch: str) -> EntryResources:
    """The one entry function an assembled kernel holds (a RuntimeError if it is not one)."""
    if len(entries) != 1:
        raise RuntimeError(f"{kind} {name} {arch}: {len(entries)} entry functions, expected 1")
    return entries[0]


def collect(kinds: list[str], archs: list[str], ptxas: str, with_lto: bool = True) -> list[dict]:
    """One record per (kernel, storage kind, architecture): ptxas -v of numba-cuda's PTX, and
    (``with_lto``, where the launches link with LTO) nvJitLink's figures for the same kernel."""
    from involution.kernels import cuda as kernels

    threads = launch_threads()
    records = []
    for kind in kinds:
        accumulate = "float64" if kind == "float64" else "float32"
        storage = "int16 (bfloat16 bits)" if kind == "bfloat16" else kind
        for name in KERNELS:
            options, flags = jit_options(kind, name)
            lto = with_lto and launches_with_lto(kind, name)
            cap = kernels.get_kernels(kind)[name].targetoptions.get("max_registers")
            for arch in archs:
                limits = ARCHS[arch]
                ptx = compile_ptx(kind, name, limits.cc, **options)
                res = the_entry(parse_ptxas(assemble(ptx, arch, ptxas, flags)), kind, name, arch)
                linked = None
                if lto:
                    ltoir = compile_ltoir(kind, name, limits.cc, **options)
                    log = link_ltoir(ltoir, arch, cap)
                    linked = the_entry(parse_ptxas(log), kind, name, arch)
                launched = linked or res  # what runs: the LTO link where the launch uses it
                record = {
                    "kernel": name,
                    "kind": kind,
                    "storage": storage,
                    "accumulator": accumulate,
                    "arch": arch,
                    **{k: v for k, v in asdict(res).items() if k not in ("arch",)},
                    "lto": None
                    if linked is None
                    else {k: v for k, v in asdict(linked).items() if k not in ("arch", "entry")},
                    "occupancy_from": "nvJitLink LTO" if linked else "ptxas",
                    **occupancy(launched.registers, threads, launched.shared, limits),
                    "channel_block": kernels.CHANNEL_BLOCK if name != "grad_kernel" else None,
                }
                records.append(record)
                lto_note = "" if linked is None else f" (LTO link: {linked.registers})"
                print(
                    f"[cuda-report] {name:11s} {kind:8s} {arch}: {res.registers:3d} registers"
                    f"{lto_note}, spills {res.spill_stores}/{res.spill_loads} B, "
                    f"stack {res.stack_frame} B, occupancy {record['occupancy']:.0%}",
                    flush=True,
                )
    return records


def _local(res: dict | None) -> bool:
    return bool(res and (res["spill_stores"] or res["spill_loads"] or res["stack_frame"]))


def spills(records: list[dict]) -> list[dict]:
    """The records whose kernel spills registers or keeps a stack frame (local memory), by
    ptxas or by the LTO link."""
    return [r for r in records if _local(r) or _local(r.get("lto"))]


def _spill_text(r: dict) -> str:
    parts = []
    for label, res in (("ptxas", r), ("LTO link", r.get("lto"))):
        if _local(res):
            parts.append(
                f"{label}: {res['spill_stores']} B stored, {res['spill_loads']} B loaded, "
                f"{res['stack_frame']} B stack"
            )
    return f"{r['kernel']} {r['kind']} {r['arch']} ({'; '.join(parts)})"


def render(meta: dict, records: list[dict]) -> str:
    """The markdown section of a report's records (``meta`` and ``rows`` as written to JSON)."""
    found = meta["versions"]
    threads = records[0]["threads_per_block"] if records else "-"
    with_lto = any(r.get("lto") for r in records)
    lines = [
        "## CUDA kernels: registers, spills and occupancy (static, no GPU)",
        "",
        f"Generated {meta['date'][:10]} with `{meta['command']}` (`make cuda-report`); "
        f"records in `{meta['json']}`.",
        "",
        f"- Toolkit: ptxas {found['ptxas']} (`{meta['ptxas']}`), NVVM {found['nvvm']}, "
        f"nvJitLink {found.get('nvjitlink') or 'absent'}; numba {found['numba']}, numba-cuda "
        f"{found['numba-cuda']}, Python {found['python']}",
        "- Method: each kernel compiled by numba-cuda with the signatures and code-generation "
        "options of the kernels the `numba_cuda` backend launches: to PTX (`numba.cuda.compile_ptx`"
        ") assembled by `ptxas -v --gpu-name=<arch>`, and to LTO-IR linked by nvJitLink "
        "(`-lto -verbose`), which is how numba-cuda builds a kernel at its first launch where "
        "nvJitLink is present (on a GPU, `.ci/gpu-check`'s gpu tests compare these counts with "
        "what the loaded kernel uses). Spills, stack frame and shared memory are ptxas's; a spill "
        "in either build is listed below.",
        "- Occupancy: theoretical, from the registers of the build that is launched (the LTO link "
        "where used), at the launch configuration of `kernels.cuda.launch_config` "
        f"({threads} threads per block for every real layer shape; only jobs under 256 threads "
        "launch smaller blocks), computed as `cuda_occupancy.h` does: registers per warp rounded "
        "up to 256 and split over 4 sub-partitions, 65536 registers, 64 warps (2048 threads) and "
        "32 blocks per SM, 1 KiB of shared memory reserved per block (164 KiB per SM on sm_80, "
        "228 KiB on sm_90).",
        "",
        "| kernel | storage kind | arch | registers / thread (ptxas) | "
        + ("registers / thread (LTO link) | " if with_lto else "")
        + "spill stores (B) | spill loads (B) | stack frame (B) | shared (B) | blocks / SM | "
        "warps / SM | occupancy | limited by |",
        "|---|---|---|" + "---:|" * (9 if with_lto else 8) + "---|",
    ]
    for r in records:
        lto = r.get("lto")
        lines.append(
            f"| {r['kernel']} | {r['kind']} | {r['arch']} | {r['registers']} | "
            + (f"{lto['registers'] if lto else '-'} | " if with_lto else "")
            + f"{r['spill_stores']} | {r['spill_loads']} | {r['stack_frame']} | {r['shared']} | "
            f"{r['blocks_per_sm']} | {r['warps_per_sm']} | {r['occupancy']:.1%} | "
            f"{', '.join(r['limited_by'])} |"
        )
    bad = spills(records)
    lines += [
        "",
        "Spills: none (every kernel keeps its accumulators in registers)."
        if not bad
        else "Spills: " + "; ".join(_spill_text(r) for r in bad) + ".",
    ]
    return "\n".join(lines) + "\n"


def save(output: Path, json_path: Path, meta: dict, records: list[dict]) -> Path:
    """Write the records to ``json_path`` and render their section of ``output`` from them."""
    report.write_records(json_path, {"meta": meta, "rows": records})
    sections.write_section(output, render(meta, records), SECTION)
    return json_path


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
    parser.add_argument(
        "--no-lto", dest="lto", action="store_false", help="skip the nvJitLink (LTO) builds"
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="compile nothing: rebuild the section from the records (--json)",
    )
    args = parser.parse_args(argv)
    json_path = args.json or args.output.parent / "cuda_resources.json"
    if args.render:
        found = report.records_to_render(parser, json_path)
        sections.write_section(args.output, render(found["meta"], found["rows"]), SECTION)
        print(f"[cuda-report] rebuilt the section of {args.output} from {json_path}")
        return 0
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
    meta = report.meta(
        NAME,
        report.command("involution.bench.cuda_resources", argv),
        torch.device("cpu"),  # a static report: the machine that compiled, no GPU involved
        json=str(json_path),
        ptxas=ptxas,
        limits={arch: asdict(ARCHS[arch]) for arch in args.archs},
    )
    meta["versions"] = {"ptxas": ptxas_version(ptxas), **_versions()}
    records = collect(args.kinds, args.archs, ptxas, with_lto=args.lto)
    save(args.output, json_path, meta, records)
    print(f"[cuda-report] wrote {json_path} and the section of {args.output}")
    bad = spills(records)
    if bad:
        print(f"cuda-report: {len(bad)} kernel builds spill to local memory", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
