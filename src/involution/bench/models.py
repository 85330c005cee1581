"""Model benchmark: training step, inference and peak memory of the zoo next to torchvision's
ResNet-50.

    python -m involution.bench.models [--quick] [--models rednet50 ...] [--batches 8 32]
                                      [--modes eager compile] [--processes 3] [--reps 5]
                                      [--device cpu|cuda] [--output docs/benchmarks.md]

What a user's own script gets: each model as a plain ``create_model(name)`` builds it (its
defaults: the fused involution, BN folded in eval mode, ``memory_format=auto``), in a process
whose floating-point mode nobody touched (``--flush-denormal`` measures with denormals flushed,
as ``involution.train`` runs), torchvision's ``resnet50()`` as the yardstick, random 224x224
images, 1000 classes. The
``no_spatial50`` row is a lower bound, not a model: resnet50 with its bottlenecks' spatial
operators removed (``build``), what every 50-layer row pays before its spatial operator.

- Training step: forward + cross-entropy + backward + SGD step (momentum, weight decay), after
  warm-up; inference: forward in eval mode under ``no_grad``.
- Isolation: every (model, batch, mode) runs alone in a fresh Python process, ``--processes``
  processes per model, alternating between models round by round; within a process the heap is
  held in one steady state (glibc keeps freed blocks, see ``bench.ops.steady_heap``), as a training
  loop's own allocator is. Times are each process's median, and of those the fastest process's
  (another job on a shared machine only adds time); peak memory is the median over processes.
- Peak memory of one training step: CPU, the growth of the peak resident set over what the
  process held before the step (``bench.ops.peak_memory``), and beside it the peak of the
  step's tensors themselves (``bench.ops.tensor_peak``: what the resident set holds beyond it is
  the C allocator's); GPU, ``torch.cuda.max_memory_allocated`` above the memory allocated before
  the step.
- GPU (``--device cuda``): AMP (``--amp bf16 fp16``) with channels_last models and inputs;
  fp16 trains with a GradScaler.

Results: JSON records (``benchmarks.models.json`` beside ``benchmarks.md``) and this benchmark's
section of the markdown file, with every row's ratio to torchvision's ResNet-50 at the same batch
and mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from involution.bench import report, sections

NAME = "models"
SECTION = "involution.bench.models"
YARDSTICK = "torchvision_resnet50"
# the bottleneck skeleton of resnet50/rednet50 without its spatial operator (see ``build``)
FLOOR = "no_spatial50"
MODELS = ["rednet26", "rednet50", "rednet101", "resnet26", "resnet50", "sasa50", FLOOR, YARDSTICK]
QUICK_MODELS = ["rednet26", "resnet26", "rednet50", YARDSTICK]
RESULT = "BENCH-RESULT "

# (model, its counterpart) pairs the targets compare; each against torchvision's ResNet-50 too.
TARGETS = {"train": 0.75, "infer": 0.7, "peak": 1.0}
PAIRS = [("rednet50", YARDSTICK), ("rednet26", "resnet26")]
# The GPU rows' (AMP) targets: rednet50 trains at least as many images/s as a ResNet-50, ours and
# torchvision's, in no more peak memory.
GPU_TARGETS = {"train": 1.0, "peak": 1.0}
GPU_PAIRS = [("rednet50", "resnet50"), ("rednet50", YARDSTICK)]


# ------------------------------------------------------------------------------------------------
# One measurement, in its own process
# ------------------------------------------------------------------------------------------------


def build(name: str) -> torch.nn.Module:
    """The model ``name`` as a user gets it: ``create_model(name)``, torchvision's ``resnet50()``
    for the yardstick, and for ``FLOOR`` our resnet50 with every bottleneck's spatial operator
    removed (an identity, an average pool where the block strides): what the 1x1 convolutions,
    BNs, ReLUs, shortcuts and head cost on their own, which no choice of spatial operator (the
    involution layer included) can go below. Not a network to train: a lower bound to read the
    other rows against."""
    if name == YARDSTICK:
        import torchvision

        return torchvision.models.resnet50()
    from involution.models import create_model

    if name != FLOOR:
        return create_model(name)
    from involution.models.blocks import Bottleneck

    model = create_model("resnet50")
    for block in model.modules():
        if isinstance(block, Bottleneck):
            stride = block.conv2.stride[0]
            block.conv2 = torch.nn.AvgPool2d(stride) if stride > 1 else torch.nn.Identity()
    return model


def _timed(fn, reps: int, sync) -> list[float]:
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Train-step and inference times and the peak memory of one training step for ``spec``
    (``model``, ``batch``, ``mode``, ``reps``, ``warmup``, ``device``, ``amp``)."""
    from involution.bench.ops import cuda_peak_memory, peak_memory, steady_heap, tensor_peak

    if spec.get("flush_denormal"):  # as involution.train runs (flush_denormal: true)
        torch.set_flush_denormal(True)
    device = torch.device(spec["device"])
    amp = spec.get("amp")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if device.type == "cpu":
        steady_heap()
        sync = lambda: None  # noqa: E731
    else:
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    torch.manual_seed(0)
    model = build(spec["model"]).to(device)
    size = spec.get("image_size", 224)
    x = torch.randn(spec["batch"], 3, size, size, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (spec["batch"],), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    run = model
    if spec["mode"] == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1  # no compile workers stealing cores (see bench.ops)
        run = torch.compile(model)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(run(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def infer() -> None:
        with torch.no_grad(), autocast():
            run(x)

    result: dict[str, Any] = dict(spec)
    model.train()
    start = time.perf_counter()
    train_step()
    sync()
    result["first_train_step_s"] = time.perf_counter() - start
    for _ in range(spec["warmup"]):
        train_step()
    result["train_s"] = _timed(train_step, spec["reps"], sync)
    if device.type == "cuda":
        result["peak_bytes"] = cuda_peak_memory(train_step, device)
    else:
        result["peak_bytes"] = peak_memory(train_step)
        result["tensor_peak_bytes"] = tensor_peak(train_step)
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    start = time.perf_counter()
    infer()
    sync()
    result["first_infer_s"] = time.perf_counter() - start
    for _ in range(spec["warmup"]):
        infer()
    result["infer_s"] = _timed(infer, spec["reps"], sync)
    return result


def worker(spec_json: str) -> None:
    try:
        result = measure(json.loads(spec_json))
    except Exception as error:  # noqa: BLE001 - reported in the table (e.g. out of memory)
        result = {**json.loads(spec_json), "error": f"{type(error).__name__}: {error}"[:200]}
    print(RESULT + json.dumps(result), flush=True)


def run_worker(
    spec: dict[str, Any], timeout: float, module: str = "involution.bench.models"
) -> dict[str, Any]:
    """``measure(spec)`` in a fresh interpreter (``python -m <module> --worker SPEC``, whose
    worker prints one ``RESULT`` line: this module's, or another benchmark's such as
    ``bench.detection``); its error (or a time-out) becomes the result."""
    command = [sys.executable, "-m", module, "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {**spec, "error": f"worker exited {done.returncode}: {tail}"[:200]}


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


def counts(name: str, image_size: int = 224) -> dict[str, int]:
    from involution.models import count_macs, count_params

    model = build(name)
    return {
        "params": count_params(model),
        "macs": count_macs(model, (3, image_size, image_size), "cpu"),
    }


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, batch, mode, amp): medians over processes, ratios to the yardstick."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["model"], r["batch"], r["mode"], r.get("amp")), []).append(r)
    rows = []
    for (model, batch, mode, amp), runs in groups.items():
        ok = [r for r in runs if "error" not in r]
        row: dict[str, Any] = {"model": model, "batch": batch, "mode": mode, "amp": amp}
        row["processes"] = len(ok)
        if not ok:
            row["error"] = runs[0]["error"]
            rows.append(row)
            continue
        # each process's median; across processes the fastest: on a shared machine another job
        # only ever adds time, so the fastest process is the one the others disturbed least
        row["train_s"] = min(statistics.median(r["train_s"]) for r in ok)
        row["infer_s"] = min(statistics.median(r["infer_s"]) for r in ok)
        peaks = [r["peak_bytes"] for r in ok if r.get("peak_bytes") is not None]
        row["peak_bytes"] = statistics.median(peaks) if peaks else None
        tensors = [r["tensor_peak_bytes"] for r in ok if r.get("tensor_peak_bytes") is not None]
        row["tensor_peak_bytes"] = statistics.median(tensors) if tensors else None
        row["images_per_s"] = batch / row["train_s"]
        row["first_train_step_s"] = statistics.median(r["first_train_step_s"] for r in ok)
        rows.append(row)
    by_key = {(r["model"], r["batch"], r["mode"], r["amp"]): r for r in rows}
    for row in rows:
        base = by_key.get((YARDSTICK, row["batch"], row["mode"], row["amp"]))
        for key in ("train_s", "infer_s", "peak_bytes", "tensor_peak_bytes"):
            ok = base and row.get(key) and base.get(key)
            row[f"{key}_ratio"] = row[key] / base[key] if ok else None
    return rows


def _merged_commands(previous: dict[str, Any], kept: list[dict[str, Any]]) -> list[str]:
    """The commands that measured the runs a merged call keeps, each once (a run records its
    command; one from older records, which did not, counts as the previous call's)."""
    return list(dict.fromkeys(run.get("command", previous["command"]) for run in kept))


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    device = meta["device"]
    merged = meta.get("merged") or []
    merged = [merged] if isinstance(merged, str) else merged
    lines = [
        "## Models: training step, inference and memory against torchvision's ResNet-50",
        "",
        f"Measured {meta['date']} with `{meta['command']}` (`make bench`)"
        + (
            ", merged with the rows of " + "; ".join(f"`{c}`" for c in merged) + "."
            if merged
            else "."
        ),
        "",
        f"- Machine: {meta['machine']}",
        f"- Versions: {report.versions_line(meta['versions'])}",
        f"- Load average (1/5/15 min) at start: {meta['load_start']}; at end: {meta['load_end']}",
        "- Method: each model as a plain `create_model(name)` builds it (torchvision's "
        f"`resnet50()` as the yardstick), {meta['image_size']}x{meta['image_size']} random "
        "images, 1000 classes, "
        + (
            "denormals flushed in every process (as `involution.train` runs). "
            if meta.get("flush_denormal")
            else "in processes whose floating-point mode nobody set (what a user's own script "
            "gets; `involution.train` flushes denormals). "
        )
        + "Training step = forward + cross-entropy + backward + SGD step; "
        "inference = eval-mode forward under `no_grad`. "
        f"Every (model, batch, mode) alone in a fresh process, {meta['processes']} process(es) per "
        f"model alternating round by round, {meta['warmup']} warm-up and {meta['reps']} timed "
        "repetitions each, the heap held steady within a process; times are each process's "
        "median, the fastest process's (other jobs on a shared machine only add time), peak "
        "memory the median over processes. Peak memory: what one training step adds "
        + (
            "(`torch.cuda.max_memory_allocated` above what was allocated before it)."
            if device == "cuda"
            else "to the process's resident set (high-water mark reset via /proc/self/clear_refs). "
            "Peak tensors: the most bytes of tensor storage the step held at once, whatever the C "
            "allocator made of it (`bench.ops.tensor_peak`: every op's outputs at dispatch, each "
            "until freed; the CPU's counterpart of `torch.cuda.max_memory_allocated`). The target "
            "is judged on the resident set."
        ),
    ]
    if device == "cuda":
        lines.append("- GPU rows: AMP autocast, channels_last model and input.")
    head = [
        "model",
        "batch",
        "mode",
        "params (M)",
        "GMACs",
        "train step (s)",
        "images/s",
        "inference (s)",
        "peak train memory (MiB)",
        "train vs tv-R50",
        "infer vs tv-R50",
        "memory vs tv-R50",
    ]
    if device == "cuda":
        head.insert(3, "AMP")
    else:  # the tensors' own peak beside the resident set's (see bench.ops.tensor_peak)
        head += ["peak tensors (MiB)", "tensors vs tv-R50"]
    lines += [
        "",
        *report.table_head(head),
    ]
    for row in rows:
        c = meta["counts"].get(row["model"], {})
        cells = [row["model"], str(row["batch"]), row["mode"]]
        if device == "cuda":
            cells.append(row["amp"] or "fp32")
        if row.get("error"):
            cells[0] = f"{row['model']} (failed: {row['error'].replace('|', '/')})"
        peak = row.get("peak_bytes")
        cells += [
            report.cell(c.get("params", 0) / 1e6 if c else None, ".2f"),
            report.cell(c.get("macs", 0) / 1e9 if c else None, ".2f"),
            report.cell(row.get("train_s"), ".3f"),
            report.cell(row.get("images_per_s"), ".1f"),
            report.cell(row.get("infer_s"), ".3f"),
            report.cell(peak / 2**20 if peak else None, ".0f"),
            report.cell(row.get("train_s_ratio"), ".2f"),
            report.cell(row.get("infer_s_ratio"), ".2f"),
            report.cell(row.get("peak_bytes_ratio"), ".2f"),
        ]
        if device != "cuda":
            tensors = row.get("tensor_peak_bytes")
            cells += [
                report.cell(tensors / 2**20 if tensors else None, ".0f"),
                report.cell(row.get("tensor_peak_bytes_ratio"), ".2f"),
            ]
        lines.append(report.table_row(cells))
    verdicts = targets(rows)
    if verdicts:
        lines += [
            "",
            "Targets (AMP: train step <= 1.0x, i.e. at least the images/s, peak memory <= 1.0x):"
            if device == "cuda"
            else "Targets (train step <= 0.75x, inference <= 0.7x, peak memory <= 1.0x):",
            "",
            *verdicts,
        ]
    return "\n".join(lines) + "\n"


_MEASURES = {"train": "train_s", "infer": "infer_s", "peak": "peak_bytes"}


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (pair, batch, mode, AMP): each measured ratio beside its target (``TARGETS``
    and ``PAIRS``; for the GPU's AMP rows ``GPU_TARGETS`` and ``GPU_PAIRS``); and whether the
    compiled ratios are no worse than the eager ones."""
    by_key = {(r["model"], r["batch"], r["mode"], r["amp"]): r for r in rows}

    def ratios(model: str, other: str, batch: int, mode: str, amp: str | None) -> dict[str, float]:
        row, base = by_key.get((model, batch, mode, amp)), by_key.get((other, batch, mode, amp))
        if not row or not base or row.get("error") or base.get("error"):
            return {}
        found = {}
        for name, key in _MEASURES.items():
            if row.get(key) and base.get(key):
                found[name] = row[key] / base[key]
        return found

    out = []
    plans = [(PAIRS, TARGETS, False), (GPU_PAIRS, GPU_TARGETS, True)]
    for (model, other), goals, amp_rows in [(p, g, a) for ps, g, a in plans for p in ps]:
        for name, batch, mode, amp in sorted(by_key, key=str):
            if name != model or (amp is not None) != amp_rows:
                continue
            measured = {
                key: ratio
                for key, ratio in ratios(model, other, batch, mode, amp).items()
                if key in goals
            }
            if not measured:
                continue
            parts = [
                f"{key} {ratio:.2f}x ({'met' if ratio <= goals[key] else 'MISSED'})"
                for key, ratio in measured.items()
            ]
            if mode == "compile":
                eager = ratios(model, other, batch, "eager", amp)
                worse = [key for key, ratio in measured.items() if ratio > eager.get(key, ratio)]
                if eager:
                    parts.append(
                        "compiled no worse than eager"
                        if not worse
                        else f"compiled WORSE than eager in {', '.join(worse)}"
                    )
            amp_tag = f" {amp}" if amp else ""
            out.append(f"- {model} vs {other}, batch {batch}, {mode}{amp_tag}: " + ", ".join(parts))
    return out


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def _row_key(run: dict[str, Any]) -> tuple:
    return (run["model"], run["batch"], run["mode"], run.get("amp"))


def save(
    output: Path, meta: dict[str, Any], results: list[dict[str, Any]], load_end: str | None = None
) -> Path:
    """The JSON records and the markdown section of the runs so far."""
    meta = {**meta, "load_end": load_end or report.load_average()}
    rows = aggregate(results)
    payload = {"meta": meta, "rows": rows, "runs": results}
    json_path = report.write_records(report.records_path(output, NAME), payload)
    sections.write_section(output, render(meta, rows), SECTION)
    return json_path


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every worker run, round by round (models alternate within a round)."""
    amps = args.amp if args.device == "cuda" else [None]
    specs = []
    for _ in range(args.processes):
        for batch in args.batches:
            for mode in args.modes:
                for amp in amps:
                    for model in args.models:
                        specs.append(
                            {
                                "model": model,
                                "batch": batch,
                                "mode": mode,
                                "amp": amp,
                                "reps": args.reps,
                                "warmup": args.warmup,
                                "device": args.device,
                                "image_size": args.image_size,
                                "flush_denormal": args.flush_denormal,
                            }
                        )
    return specs


def make_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (``resolve`` fills in the defaults that depend on the
    device)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="4 models, batch 8, eager, 1 process")
    parser.add_argument("--models", nargs="+", default=None, choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--modes", nargs="+", default=None, choices=("eager", "compile"))
    parser.add_argument("--amp", nargs="+", default=["bf16", "fp16"], choices=("bf16", "fp16"))
    parser.add_argument("--processes", type=int, default=None, help="fresh processes per model")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument(
        "--flush-denormal",
        action="store_true",
        help="flush denormals in every worker, as involution.train does (default: the "
        "floating-point mode a plain script has)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker process")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rebuild the section from the recorded runs (benchmarks.models.json)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the recorded runs of (model, batch, mode, amp) rows this call does not measure",
    )
    return parser


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the device's defaults filled in and checked (``parser.error`` on bad ones);
    the yardstick always among the models."""
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = args.device == "cuda"
    defaults = {
        "models": QUICK_MODELS if args.quick else (["rednet50", YARDSTICK] if gpu else MODELS),
        "batches": [8] if args.quick else ([64, 128] if gpu else [8, 32]),
        "modes": ["eager"] if args.quick or gpu else ["eager", "compile"],
        "processes": 1 if args.quick or gpu else 3,
        "reps": 3 if args.quick else 5,
        "warmup": 1 if args.quick else 2,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("processes", "reps", "batches"):
        values = getattr(args, key)
        if min(values if isinstance(values, list) else [values]) < 1:
            parser.error(f"argument --{key}: must be >= 1, got {values}")
    if args.warmup < 0:
        parser.error(f"argument --warmup: must be >= 0, got {args.warmup}")
    if YARDSTICK not in args.models:
        args.models.append(YARDSTICK)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    if args.render:
        records = report.records_path(args.output, NAME)
        previous = report.records_to_render(parser, records)
        save(args.output, previous["meta"], previous["runs"], previous["meta"].get("load_end"))
        print(f"[bench-models] rebuilt {args.output} from {records}")
        return
    args = resolve(parser, args)
    meta = report.meta(
        NAME,
        report.command("involution.bench.models", argv),
        torch.device(args.device),
        device=args.device,
        load_start=report.load_average(),
        processes=args.processes,
        reps=args.reps,
        warmup=args.warmup,
    )
    meta["image_size"] = args.image_size
    meta["flush_denormal"] = args.flush_denormal
    meta["counts"] = {name: counts(name, args.image_size) for name in args.models}
    specs = plan(args)
    results: list[dict[str, Any]] = []
    if args.merge and report.records_path(args.output, NAME).exists():
        measured = {_row_key(spec) for spec in specs}
        previous = report.read_records(report.records_path(args.output, NAME))
        results = [run for run in previous["runs"] if _row_key(run) not in measured]
        meta["merged"] = _merged_commands(previous["meta"], results)
        if previous["meta"].get("image_size") == args.image_size:
            # the kept rows' parameter and MAC counts (this call counts only its own models)
            meta["counts"] = {**previous["meta"].get("counts", {}), **meta["counts"]}
        for name in sorted({run["model"] for run in results} - set(meta["counts"])):
            meta["counts"][name] = counts(name, args.image_size)  # records that lacked them
    json_path = None
    started = time.perf_counter()
    for index, spec in enumerate(specs, 1):
        result = {**run_worker(spec, args.timeout), "command": meta["command"]}
        results.append(result)
        elapsed = time.perf_counter() - started
        eta = elapsed / index * (len(specs) - index)
        what = f"{spec['model']} batch {spec['batch']} {spec['mode']}" + (
            f" {spec['amp']}" if spec.get("amp") else ""
        )
        if "error" in result:
            summary = f"failed: {result['error']}"
        else:
            summary = (
                f"train {statistics.median(result['train_s']):.3f} s, "
                f"infer {statistics.median(result['infer_s']):.3f} s, "
                f"peak {(result['peak_bytes'] or 0) / 2**20:.0f} MiB"
            )
        print(
            f"[bench-models {index}/{len(specs)} {elapsed / 60:.1f} min, ~{eta / 60:.1f} min left] "
            f"{what}: {summary}",
            flush=True,
        )
        # rewritten after every run, so that a time limit (e.g. .ci/gpu-check's) keeps what is done
        json_path = save(args.output, meta, results)
    rows = aggregate(results)
    print(f"[bench-models] wrote {args.output} and {json_path}")
    for line in targets(rows):
        print(line)


if __name__ == "__main__":
    main()
