"""Detection and segmentation benchmark: RedNet-50-FPN Faster R-CNN, Mask R-CNN and Semantic FPN
with convolution and involution necks against the same models on torchvision's ResNet-50-FPN.

    python -m involution.bench.detection [--quick] [--models ...] [--batch 2] [--image-size 512]
                                         [--processes 2] [--reps 3] [--output docs/benchmarks.md]

Each model as a user builds it: ``create_detector(kind, "rednet50", 80, neck=...)`` /
``create_segmenter("semantic_fpn", "rednet50", 19, neck=...)`` (their defaults: a random
backbone that trains whole, memory-lean involution, ``memory_format=auto``), the yardsticks
torchvision's ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` /
``maskrcnn_resnet50_fpn(...)`` and, for Semantic FPN (which torchvision does not ship), our
Semantic FPN head on torchvision's ``resnet50`` + ``BackboneWithFPN``. The detectors resize to
``--image-size`` (min_size = max_size), 80 (+ background) COCO classes, 19 Cityscapes classes.

- Training step: forward with targets (3 boxes per image, their masks for Mask R-CNN; random
  labels for segmentation) + the model's losses + backward + SGD step; inference: eval-mode
  forward under ``no_grad`` (a detector's post-processing included: with random weights few
  boxes pass the 0.05 score threshold, so its RoI heads and mask pasting cost little).
- Isolation and statistics as the model benchmark (``bench.models``): every model alone in fresh
  processes, alternating round by round, denormals flushed as ``involution.train`` does, the heap
  held steady; each process's median, the fastest process's time and the median peak memory
  (``bench.models.aggregate``).

Results: JSON records (``benchmarks.detection.json`` beside ``benchmarks.md``) and this
benchmark's section of the markdown file, with each involution-neck row's ratios to its
convolution-neck twin (the target: no more time or memory) and to the torchvision model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

from involution.bench import models as bench_models
from involution.bench import report, sections

NAME = "detection"
SECTION = "involution.bench.detection"
RESULT = bench_models.RESULT

# model -> (task, backbone, neck); "tv_" rows are the torchvision yardsticks
MODELS: dict[str, tuple[str, str, str]] = {}
for _task in ("fasterrcnn", "maskrcnn", "semantic_fpn"):
    MODELS[f"rednet50_{_task}_conv"] = (_task, "rednet50", "convolution")
    MODELS[f"rednet50_{_task}_inv"] = (_task, "rednet50", "involution")
    MODELS[f"tv_resnet50_{_task}"] = (_task, "torchvision resnet50", "convolution")
QUICK_MODELS = ["rednet50_fasterrcnn_conv", "rednet50_fasterrcnn_inv", "tv_resnet50_fasterrcnn"]
DET_CLASSES, SEG_CLASSES = 80, 19
_ENVIRONMENT = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")


def twin(model: str) -> str | None:
    """An involution-neck row's convolution-neck twin."""
    return model[: -len("_inv")] + "_conv" if model.endswith("_inv") else None


def yardstick(model: str) -> str:
    return f"tv_resnet50_{MODELS[model][0]}"


# ------------------------------------------------------------------------------------------------
# One measurement, in its own process
# ------------------------------------------------------------------------------------------------


def build(model: str, image_size: int) -> torch.nn.Module:
    """The model ``model`` as a user builds it (see the module's docstring)."""
    task, backbone, neck = MODELS[model]
    size = {"min_size": image_size, "max_size": image_size}
    if model.startswith("tv_"):
        import torchvision
        from torchvision.models import detection

        if task != "semantic_fpn":
            builder = getattr(detection, f"{task}_resnet50_fpn")
            return builder(weights=None, weights_backbone=None, num_classes=DET_CLASSES + 1, **size)
        from torchvision.models.detection.backbone_utils import BackboneWithFPN

        from involution.models.segmentation import Segmenter, SemanticFPNHead

        layers = {f"layer{i}": str(i - 1) for i in range(1, 5)}
        fpn = BackboneWithFPN(torchvision.models.resnet50(), layers, [256, 512, 1024, 2048], 256)
        fpn.fpn.extra_blocks = None  # mmseg's FPN: num_outs=4
        return Segmenter(fpn, SemanticFPNHead(256, (4, 8, 16, 32), 128, SEG_CLASSES))
    if task == "semantic_fpn":
        from involution.models import create_segmenter

        return create_segmenter(task, backbone, SEG_CLASSES, neck=neck)
    from involution.models import create_detector

    return create_detector(task, backbone, DET_CLASSES, neck=neck, **size)


def inputs(model: str, batch: int, size: int, device: torch.device) -> tuple[Any, Any]:
    """(images, targets) of a training step: fixed boxes (and masks) or random label maps."""
    generator = torch.Generator().manual_seed(0)
    task = MODELS[model][0]
    if task == "semantic_fpn":
        images = torch.rand(batch, 3, size, size, generator=generator)
        labels = torch.randint(0, SEG_CLASSES, (batch, size, size), generator=generator)
        return images.to(device), labels.to(device)
    images = [torch.rand(3, size, size, generator=generator).to(device) for _ in range(batch)]
    fractions = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.3, 0.9, 0.8], [0.2, 0.6, 0.45, 0.95]])
    boxes = (fractions * size).round()
    targets = []
    for _ in range(batch):
        target = {"boxes": boxes.to(device), "labels": torch.tensor([1, 17, 42], device=device)}
        if task == "maskrcnn":
            masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            target["masks"] = masks.to(device)
        targets.append(target)
    return images, targets


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Train-step and inference times and the peak memory of one training step for ``spec``
    (``model``, ``batch``, ``image_size``, ``reps``, ``warmup``, ``device``)."""
    from involution.bench.ops import cuda_peak_memory, peak_memory, steady_heap

    torch.set_flush_denormal(True)  # as involution.train does, before the model is built
    device = torch.device(spec.get("device", "cpu"))
    if device.type == "cpu":
        steady_heap()
        sync = lambda: None  # noqa: E731
    else:
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    torch.manual_seed(0)
    model = build(spec["model"], spec["image_size"]).to(device)
    images, targets = inputs(spec["model"], spec["batch"], spec["image_size"], device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    segmentation = MODELS[spec["model"]][0] == "semantic_fpn"

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if segmentation:
            loss = torch.nn.functional.cross_entropy(model(images)["out"], targets)
        else:
            loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()

    def infer() -> None:
        with torch.no_grad():
            model(images)

    result: dict[str, Any] = {**spec, "mode": "eager", "amp": None}
    model.train()
    start = time.perf_counter()
    train_step()
    sync()
    result["first_train_step_s"] = time.perf_counter() - start
    for _ in range(spec["warmup"]):
        train_step()
    result["train_s"] = bench_models._timed(train_step, spec["reps"], sync)
    if device.type == "cuda":
        result["peak_bytes"] = cuda_peak_memory(train_step, device)
    else:
        result["peak_bytes"] = peak_memory(train_step)
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    for _ in range(max(1, spec["warmup"])):
        infer()
    result["infer_s"] = bench_models._timed(infer, spec["reps"], sync)
    return result


def worker(spec_json: str) -> None:
    try:
        result = measure(json.loads(spec_json))
    except Exception as error:  # noqa: BLE001 - reported in the table (e.g. out of memory)
        result = {**json.loads(spec_json), "error": f"{type(error).__name__}: {error}"[:200]}
    print(RESULT + json.dumps(result), flush=True)


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``measure(spec)`` in a fresh interpreter, through the model benchmark's launcher."""
    return bench_models.run_worker(spec, timeout, module="involution.bench.detection")


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


def counts(model: str, image_size: int) -> dict[str, int]:
    """Parameters and multiply-adds (``count_macs``: an R-CNN on its configured RoI counts)."""
    from involution.models import count_macs, count_params

    built = build(model, image_size)
    return {"params": count_params(built), "macs": count_macs(built, (3, image_size, image_size))}


_MEASURES = {"train": "train_s", "infer": "infer_s", "peak": "peak_bytes"}


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``bench.models.aggregate``'s rows, with ratios to the convolution-neck twin
    (``*_twin_ratio``) and to the torchvision model (``*_tv_ratio``)."""
    rows = bench_models.aggregate(results)
    by_model = {r["model"]: r for r in rows}
    for row in rows:
        for suffix, other in (("twin", twin(row["model"])), ("tv", yardstick(row["model"]))):
            base = by_model.get(other) if other else None
            for key in _MEASURES.values():
                ok = base and row.get(key) and base.get(key)
                row[f"{key}_{suffix}_ratio"] = row[key] / base[key] if ok else None
    return rows


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """One line per involution-neck model: its time and memory against its convolution-neck
    twin's (the issue's target: no more of either)."""
    lines = []
    for row in rows:
        other = twin(row["model"])
        measured = {k: row.get(f"{key}_twin_ratio") for k, key in _MEASURES.items()}
        if other is None or any(v is None for v in measured.values()):
            continue
        parts = [f"{k} {v:.2f}x ({'met' if v <= 1.0 else 'MISSED'})" for k, v in measured.items()]
        lines.append(f"- {row['model']} vs {other}: " + ", ".join(parts))
    return lines


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    size, batch = meta["image_size"], meta["batch"]
    lines = [
        "## Detection and segmentation: RedNet-50-FPN necks against torchvision's ResNet-50-FPN",
        "",
        f"Measured {meta['date']} with `{meta['command']}` (`make bench-detection`).",
        "",
        f"- Machine: {meta['machine']}",
        f"- Versions: {report.versions_line(meta['versions'])}",
        f"- Load average (1/5/15 min) at start: {meta['load_start']}; at end: {meta['load_end']}",
        f"- Method: batch {batch} of {size}x{size} images; detectors from `create_detector` "
        f"(80 classes, min_size = max_size = {size}), Semantic FPN from `create_segmenter` "
        "(19 classes); yardsticks torchvision's `fasterrcnn_resnet50_fpn` / "
        "`maskrcnn_resnet50_fpn` (no weights) and mmseg's FPN head on torchvision's ResNet-50 + "
        "`BackboneWithFPN`. Training step = forward with targets + losses + backward + SGD step; "
        "inference = eval-mode forward under `no_grad` (post-processing included). Every model "
        f"alone in fresh processes, {meta['processes']} per model alternating round by round, "
        f"{meta['warmup']} warm-up and {meta['reps']} timed repetitions each; times are the "
        "fastest process's median, peak memory the median over processes of what one training "
        "step adds to the resident set. MACs: `count_macs` (an R-CNN with "
        "`rpn_post_nms_top_n_test` RoIs in the box head and `box_detections_per_img` in the mask "
        "head, as mmdet's `get_flops`)."
        + (
            " Environment: " + ", ".join(f"`{k}={v}`" for k, v in meta["environment"].items()) + "."
            if meta.get("environment")
            else ""
        ),
        "",
        "| model | task | backbone | neck | params (M) | GMACs | train step (s) | inference (s) "
        "| peak train memory (MiB) | train vs conv neck | infer vs conv neck | memory vs conv neck "
        "| train vs torchvision |",
        "|---|---|---|---|" + "---:|" * 9,
    ]
    for row in rows:
        task, backbone, neck = MODELS.get(row["model"], ("?", "?", "?"))
        c = meta["counts"].get(row["model"], {})
        name = row["model"]
        if row.get("error"):
            name += f" (failed: {row['error'].replace('|', '/')})"
        peak = row.get("peak_bytes")
        cells = [
            name,
            task,
            backbone,
            neck,
            report.cell(c.get("params", 0) / 1e6 if c else None, ".2f"),
            report.cell(c.get("macs", 0) / 1e9 if c else None, ".1f"),
            report.cell(row.get("train_s"), ".2f"),
            report.cell(row.get("infer_s"), ".2f"),
            report.cell(peak / 2**20 if peak else None, ".0f"),
            report.cell(row.get("train_s_twin_ratio"), ".2f"),
            report.cell(row.get("infer_s_twin_ratio"), ".2f"),
            report.cell(row.get("peak_bytes_twin_ratio"), ".2f"),
            report.cell(row.get("train_s_tv_ratio"), ".2f"),
        ]
        lines.append(report.table_row(cells))
    verdicts = targets(rows)
    if verdicts:
        lines += [
            "",
            "Target: an involution-neck model costs no more training time, inference time or "
            "peak memory than its convolution-neck twin (<= 1.0x):",
            "",
            *verdicts,
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def save(output, meta: dict[str, Any], results: list[dict[str, Any]], load_end=None):
    """The JSON records and the markdown section of the runs so far."""
    meta = {**meta, "load_end": load_end or report.load_average()}
    rows = aggregate(results)
    path = report.write_records(
        report.records_path(output, NAME), {"meta": meta, "rows": rows, "runs": results}
    )
    sections.write_section(output, render(meta, rows), SECTION)
    return path


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every worker run, round by round (models alternate within a round)."""
    return [
        {
            "model": model,
            "batch": args.batch,
            "image_size": args.image_size,
            "reps": args.reps,
            "warmup": args.warmup,
            "device": args.device,
        }
        for _ in range(args.processes)
        for model in args.models
    ]


def main(argv: list[str] | None = None) -> None:
    from pathlib import Path

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="Faster R-CNN only, 1 process")
    parser.add_argument("--models", nargs="+", default=None, choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=None, help="512 (--quick: 256)")
    parser.add_argument("--processes", type=int, default=None, help="fresh processes per model")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker process")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: rebuild the section from records"
    )
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    if args.render:
        records = report.records_path(args.output, NAME)
        previous = report.records_to_render(parser, records)
        save(args.output, previous["meta"], previous["runs"], previous["meta"].get("load_end"))
        print(f"[bench-detection] rebuilt {args.output} from {records}")
        return
    args.models = args.models or (QUICK_MODELS if args.quick else list(MODELS))
    args.processes = args.processes or (1 if args.quick else 2)
    args.reps = args.reps or (2 if args.quick else 3)
    args.image_size = args.image_size or (256 if args.quick else 512)
    for key in ("batch", "image_size", "processes", "reps"):
        if getattr(args, key) < 1:
            parser.error(f"argument --{key.replace('_', '-')}: must be >= 1")
    meta = report.meta(
        NAME,
        report.command("involution.bench.detection", argv),
        torch.device(args.device),
        device=args.device,
        load_start=report.load_average(),
        processes=args.processes,
        reps=args.reps,
        warmup=args.warmup,
        batch=args.batch,
        image_size=args.image_size,
        # OpenMP settings change what a loaded machine measures: recorded when set
        environment={k: os.environ[k] for k in _ENVIRONMENT if k in os.environ},
    )
    meta["counts"] = {model: counts(model, args.image_size) for model in args.models}
    specs = plan(args)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    for index, spec in enumerate(specs, 1):
        result = {**run_worker(spec, args.timeout), "command": meta["command"]}
        results.append(result)
        elapsed = time.perf_counter() - started
        if "error" in result:
            summary = f"failed: {result['error']}"
        else:
            summary = (
                f"train {min(result['train_s']):.2f} s, infer {min(result['infer_s']):.2f} s, "
                f"peak {(result['peak_bytes'] or 0) / 2**20:.0f} MiB"
            )
        print(
            f"[bench-detection {index}/{len(specs)} {elapsed / 60:.1f} min] {spec['model']}: "
            f"{summary}",
            flush=True,
        )
        json_path = save(args.output, meta, results)  # kept as it goes: a time limit loses little
    print(f"[bench-detection] wrote {args.output} and {json_path}")
    for line in targets(aggregate(results)):
        print(line)


if __name__ == "__main__":
    main()
