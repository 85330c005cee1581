"""``make bench-models`` (``involution.bench.models``): rows, ratios and targets from given timings;
one end-to-end run on small images in fresh worker processes, its JSON records and its section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from involution.bench import models as bench
from involution.bench.sections import read_sections


def _run(model, batch, train, infer, peak, mode="eager", amp=None, **extra):
    return {
        "model": model,
        "batch": batch,
        "mode": mode,
        "amp": amp,
        "train_s": train,
        "infer_s": infer,
        "peak_bytes": peak,
        "first_train_step_s": 1.0,
        **extra,
    }


def test_aggregate_takes_the_fastest_process_median_and_ratios_to_the_yardstick():
    results = [
        _run("torchvision_resnet50", 8, [2.0, 2.2, 2.4], [1.0], 1000, tensor_peak_bytes=650),
        _run("torchvision_resnet50", 8, [1.9, 2.0, 2.1], [1.0], 1000, tensor_peak_bytes=650),
        _run("torchvision_resnet50", 8, [3.0, 3.0, 3.0], [1.0], 1000, tensor_peak_bytes=650),
        _run("rednet50", 8, [1.0, 1.4, 9.0], [0.5], 700, tensor_peak_bytes=500),
        _run("rednet50", 8, [1.5, 1.5, 1.5], [0.6], 800, tensor_peak_bytes=520),
        _run("rednet50", 8, [1.6], [0.7], 900, tensor_peak_bytes=540),
        _run("rednet50", 32, [1.0], [0.5], 700, error="RuntimeError: out of memory"),
    ]
    rows = {(r["model"], r["batch"]): r for r in bench.aggregate(results)}
    tv, red = rows[("torchvision_resnet50", 8)], rows[("rednet50", 8)]
    assert tv["train_s"] == pytest.approx(2.0)  # process medians 2.2, 2.0, 3.0 -> fastest 2.0
    assert red["train_s"] == pytest.approx(1.4)  # process medians 1.4, 1.5, 1.6 -> 1.4
    assert red["train_s_ratio"] == pytest.approx(1.4 / 2.0)
    assert red["infer_s_ratio"] == pytest.approx(0.5)
    assert red["peak_bytes_ratio"] == pytest.approx(0.8)  # memory: median of 700, 800, 900
    assert red["tensor_peak_bytes"] == 520 and red["tensor_peak_bytes_ratio"] == pytest.approx(0.8)
    assert red["images_per_s"] == pytest.approx(8 / 1.4) and red["processes"] == 3
    assert rows[("rednet50", 32)]["error"].startswith("RuntimeError")
    lines = bench.targets(bench.aggregate(results))
    assert lines == [
        "- rednet50 vs torchvision_resnet50, batch 8, eager: train 0.70x (met), "
        "infer 0.50x (met), peak 0.80x (met)"
    ]


def test_targets_say_missed():
    results = [
        _run("resnet26", 8, [1.0], [1.0], 100),
        _run("rednet26", 8, [0.8], [0.69], 101),
        _run("torchvision_resnet50", 8, [2.0], [1.0], 200),
    ]
    lines = bench.targets(bench.aggregate(results))
    assert (
        "- rednet26 vs resnet26, batch 8, eager: train 0.80x (MISSED), infer 0.69x (met), "
        "peak 1.01x (MISSED)" in lines
    )


def test_targets_compare_compiled_with_eager_ratios():
    results = [
        _run("torchvision_resnet50", 8, [2.0], [1.0], 100),
        _run("rednet50", 8, [1.6], [0.7], 100),
        _run("torchvision_resnet50", 8, [1.0], [0.5], 100, mode="compile"),
        _run("rednet50", 8, [0.9], [0.3], 100, mode="compile"),
    ]
    lines = bench.targets(bench.aggregate(results))
    assert lines[0].startswith("- rednet50 vs torchvision_resnet50, batch 8, compile: train 0.90x")
    assert lines[0].endswith("compiled WORSE than eager in train")  # 0.90x against eager's 0.80x
    assert "compiled" not in lines[1]


def test_gpu_rows_have_the_gpu_targets_against_both_resnet50s():
    """AMP rows (the GPU's): rednet50 at least as many images/s as our resnet50 and as
    torchvision's, in no more peak memory; no inference target there."""
    results = [
        _run("torchvision_resnet50", 64, [0.20], [0.1], 1000, amp="bf16"),
        _run("resnet50", 64, [0.25], [0.1], 1200, amp="bf16"),
        _run("rednet50", 64, [0.22], [0.1], 1100, amp="bf16"),
    ]
    assert bench.targets(bench.aggregate(results)) == [
        "- rednet50 vs resnet50, batch 64, eager bf16: train 0.88x (met), peak 0.92x (met)",
        "- rednet50 vs torchvision_resnet50, batch 64, eager bf16: train 1.10x (MISSED), "
        "peak 1.10x (MISSED)",
    ]


def test_render_has_one_row_per_model_and_the_failure():
    results = [
        _run("torchvision_resnet50", 8, [2.0], [1.0], 2**20 * 800),
        _run("rednet50", 8, [1.0], [0.5], 2**20 * 700, error="TimeoutExpired | x"),
    ]
    meta = {
        "date": "2026-12-01",
        "command": "python -m involution.bench.models",
        "machine": "m",
        "versions": {"python": "3.11"},
        "device": "cpu",
        "load_start": "1",
        "load_end": "1",
        "processes": 1,
        "warmup": 1,
        "reps": 1,
        "image_size": 224,
        "counts": {"rednet50": {"params": 15_540_000, "macs": 2_650_000_000}},
    }
    text = bench.render(meta, bench.aggregate(results))
    assert "| torchvision_resnet50 | 8 | eager |" in text and "| 800 |" in text
    assert "rednet50 (failed: TimeoutExpired / x)" in text and "| 15.54 | 2.65 |" in text


def test_merge_keeps_the_counts_and_commands_of_the_rows_it_keeps(tmp_path, monkeypatch):
    """A merged call counts only its own models; the kept rows keep their parameter and MAC
    counts and the section names every call whose rows it shows, and only those."""
    monkeypatch.setattr(bench, "counts", lambda name, image_size=224: {"params": 1, "macs": 2})
    monkeypatch.setattr(
        bench,
        "run_worker",
        lambda spec, timeout: {**spec, **_run(spec["model"], spec["batch"], [1.0], [0.5], 2**20)},
    )
    out = tmp_path / "benchmarks.md"
    common = ["--batches", "8", "--modes", "eager", "--processes", "1", "--reps", "1"]
    common += ["--device", "cpu", "--output", str(out)]
    bench.main(["--models", "rednet26", *common])
    first = json.loads((tmp_path / "benchmarks.models.json").read_text())["meta"]["command"]
    monkeypatch.setattr(bench, "counts", lambda name, image_size=224: {"params": 3, "macs": 4})
    bench.main(["--models", "resnet26", "--merge", *common])
    second = json.loads((tmp_path / "benchmarks.models.json").read_text())["meta"]["command"]
    path = tmp_path / "benchmarks.models.json"
    lacking = json.loads(path.read_text())
    del lacking["meta"]["counts"]["resnet26"]  # as records written before counts were merged
    path.write_text(json.dumps(lacking))
    monkeypatch.setattr(bench, "counts", lambda name, image_size=224: {"params": 5, "macs": 6})
    bench.main(["--models", "sasa50", "--merge", *common])
    records = json.loads(path.read_text())
    assert records["meta"]["counts"]["rednet26"] == {"params": 1, "macs": 2}
    assert records["meta"]["counts"]["resnet26"] == {"params": 5, "macs": 6}  # counted again
    assert records["meta"]["counts"]["sasa50"] == {"params": 5, "macs": 6}
    assert records["meta"]["merged"] == [first, second]
    section = read_sections(out.read_text())[bench.SECTION]
    assert f"merged with the rows of `{first}`; `{second}`." in section
    bench.main(["--models", "rednet26", "resnet26", "--merge", *common])  # measures them again
    assert json.loads(path.read_text())["meta"]["merged"] == [records["meta"]["command"]]
    assert "| rednet26 | 8 | eager | 0.00 | 0.00 |" in section  # 1 param, 2 MACs


# Small images, one eager run per model and process. At 64 px the workers call the kernels with
# the signatures (dtype and layout) other tests compile too; at 32 px the last stage's maps are 1x1,
# which NumPy flags C-contiguous even in channels_last: a Numba compilation of their own.
SMALL = ["--modes", "eager", "--processes", "1", "--warmup", "0", "--image-size", "64"]


def _bench_models(out: Path, *argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "involution.bench.models",
            *SMALL,
            "--device",
            "cpu",
            "--output",
            str(out),
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_bench_models_end_to_end(tmp_path: Path):
    """Two models in their own worker processes at 64x64 (``python -m involution.bench.models``):
    the section, the JSON records (every run's raw repetitions kept), the progress lines and the
    section rebuilt from the records alone (--merge: the test above)."""
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- BEGIN other -->\nkept\n<!-- END other -->\n")
    done = _bench_models(out, "--models", "rednet26", "--batches", "2", "--reps", "2")
    assert "[bench-models 1/2" in done.stdout and "[bench-models 2/2" in done.stdout
    found = read_sections(out.read_text())
    assert found["other"].strip() == "kept"
    section = found[bench.SECTION]
    assert (
        "| rednet26 | 2 | eager |" in section and "| torchvision_resnet50 | 2 | eager |" in section
    )
    assert "| peak tensors (MiB) | tensors vs tv-R50 |" in section
    records = json.loads((tmp_path / "benchmarks.models.json").read_text())
    assert records["meta"]["image_size"] == 64 and records["meta"]["device"] == "cpu"
    assert {r["model"] for r in records["rows"]} == {"rednet26", "torchvision_resnet50"}
    for run in records["runs"]:
        assert "error" not in run, run
        assert len(run["train_s"]) == 2 and len(run["infer_s"]) == 2
        assert run["peak_bytes"] > 0  # Linux: the resident set grows during a training step
        # the step's tensors: more than the batch itself (2 x 3 x 64 x 64 float32)
        assert run["tensor_peak_bytes"] > 2 * 3 * 64 * 64 * 4
    out.write_text("# Benchmarks\n")
    bench.main(["--render", "--output", str(out)])  # the section again, from the records alone
    assert "| rednet26 | 2 | eager |" in read_sections(out.read_text())[bench.SECTION]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--models", "rednet51"], "invalid choice: 'rednet51'"),
        (["--reps", "0"], "argument --reps: must be >= 1"),
        (["--batches", "0"], "argument --batches: must be >= 1"),
    ],
)
def test_bench_models_refuses_bad_options(argv, says, capsys):
    with pytest.raises(SystemExit) as exited:
        bench.main(argv)
    assert exited.value.code == 2 and says in capsys.readouterr().err


def test_render_of_malformed_records_names_the_file(tmp_path: Path, capsys):
    records = tmp_path / "benchmarks.models.json"
    records.write_text('{"meta": {"benchmark": "models"}, "rows": []}')
    with pytest.raises(SystemExit) as exited:
        bench.main(["--render", "--output", str(tmp_path / "benchmarks.md")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2
    assert f"argument --render: {records}: meta lacks date, command, machine, versions" in err
    assert not (tmp_path / "benchmarks.md").exists()


def test_floor_is_resnet50_without_its_spatial_operators():
    """The floor row: our resnet50 with every 3x3 conv of its bottlenecks removed. What it lacks
    is exactly those convolutions: their parameters and multiply-adds, nothing else."""
    import torch

    from involution.models import count_macs, count_params, create_model
    from involution.models.blocks import Bottleneck

    floor, full = bench.build(bench.FLOOR), create_model("resnet50")
    blocks = [m for m in full.modules() if isinstance(m, Bottleneck)]
    spatial_params = sum(b.conv2.weight.numel() for b in blocks)
    assert count_params(full) - count_params(floor) == spatial_params
    assert not any(
        isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in floor.modules()
    )
    # each 3x3 conv's weight once per pixel of its block's output grid (56, 28, 14, 7 at 224)
    spatial_macs = sum(
        b.conv2.weight.numel() * (56 // scale) ** 2
        for b, scale in zip(blocks, [1] * 3 + [2] * 4 + [4] * 6 + [8] * 3, strict=True)
    )
    assert count_macs(full, (3, 224, 224)) - count_macs(floor, (3, 224, 224)) == spatial_macs
    assert floor(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
