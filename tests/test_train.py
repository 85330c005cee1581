"""End to end: `python -m involution.train` on digits writes checkpoints, CSV metrics and a W&B run;
a bad configuration stops before training with one line naming the key."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import QUICK_TRAIN, REPO, run_module, wandb_records


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """One short training run shared by the tests below."""
    root = tmp_path_factory.mktemp("train")
    run_dir = root / "run"
    result = run_module("involution.train", [f"hydra.run.dir={run_dir}", *QUICK_TRAIN], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "printed.txt").write_text(result.stdout + result.stderr)  # the console, for the tests
    return run_dir


def test_run_prints_a_header_and_a_closing_summary_only(quick_run: Path) -> None:
    """Quiet by default: no config tree, model summary, Lightning notice or test table; the
    closing summary names the best epoch's metric, the test metric, where everything went and what
    to run next. Everything is also in train.log, with Lightning's notices."""
    printed = (quick_run.parent / "printed.txt").read_text()
    lines = [line for line in printed.splitlines() if line.strip()]
    assert len(lines) <= 25, printed
    for noise in ("CONFIG", "┃", "GPU available", "Restoring states", "Test metric", "LeafSpec"):
        assert noise not in printed, noise
    assert not [line for line in lines if line.startswith("warning")], printed
    record = json.loads((quick_run / "job.json").read_text())
    metrics = record["metrics"]
    for value in (metrics["best/val/acc_top1"], metrics["test/acc_top1"]):
        assert f"{100 * value:.2f}" in printed

    def shown(path: Path) -> str:  # paths are shown from where the command ran
        return str(path.relative_to(quick_run.parent))

    best = shown(next((quick_run / "checkpoints").glob("best-*.ckpt")))
    sync = shown(next((quick_run / "wandb").glob("offline-run-*")))
    for text in (shown(quick_run), best, shown(quick_run / "checkpoints" / "last.ckpt")):
        assert text in printed
    assert f"wandb sync {sync}" in printed and f"make eval CKPT={best}" in printed
    assert "model" in lines[1] and "M params" in lines[1]  # the header comes first
    log = (quick_run / "train.log").read_text()
    assert "GPU available" in log and f"wandb sync {sync}" in log and f"CKPT={best}" in log


def test_checkpoints_best_and_last(quick_run: Path) -> None:
    checkpoints = sorted(p.name for p in (quick_run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)
    state = torch.load(
        quick_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert state["hyper_parameters"]["model"]["operator"]["name"] == "involution"
    assert any(key.startswith("model.layer1.0.conv2.span") for key in state["state_dict"])


def test_csv_metrics_hold_val_and_test(quick_run: Path) -> None:
    rows = list(csv.DictReader((quick_run / "csv" / "metrics.csv").open()))
    columns = set(rows[0])
    assert {"val/acc_top1", "val/acc_top5", "train/loss_step", "test/acc_top1"} <= columns
    val = [float(r["val/acc_top1"]) for r in rows if r["val/acc_top1"]]
    assert len(val) == 1 and 0.0 <= val[0] <= 1.0


def test_wandb_offline_run_holds_val_metrics_and_config(quick_run: Path) -> None:
    """Read the offline run back with W&B's own record reader (`wandb leet inspect --json`)."""
    logs = list((quick_run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    records = wandb_records(logs[0])
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert any("val/acc_top1" in item and "val/acc_top5" in item for item in history)
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["display_name"] == "involution-d1-gc16-k7-r4"
    assert run["run_group"] == "train-digits"
    assert {"involution", "kernel_size=7", "reduction_ratio=4", "group_channels=16"} <= set(
        run["tags"]
    )
    config_updates = [r["config"] for r in records if r["type"] == "config"]
    text = json.dumps(config_updates)
    for key in ("params", "macs", "operator", "kernel_size", "optimized_metric", '"seed"'):
        assert key in text, f"{key} missing from the W&B run config"
    # every seed the run uses: the global one and the data split/order one
    config = (quick_run / ".hydra" / "config.yaml").read_text()
    assert "seed: 42" in config and config.count("seed:") >= 2


def test_run_directory_holds_resolved_config(quick_run: Path) -> None:
    assert (quick_run / ".hydra" / "config.yaml").is_file()
    assert "output_dir" in (quick_run / ".hydra" / "config.yaml").read_text()


def test_cli_bad_config_prints_one_line_and_starts_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", "operator.kernel_size=4"]
    result = run_module("involution.train", args, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert (
        len(lines) == 1 and lines[0].startswith("error:") and "operator.kernel_size" in lines[0]
    ), result.stderr
    assert "odd" in lines[0]
    assert not (run_dir / "checkpoints").exists()


def test_cli_unknown_option_lists_choices(tmp_path: Path) -> None:
    result = run_module("involution.train", ["operator=deformable"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Available options in 'operator'" in result.stderr and "involution" in result.stderr


def test_make_train_passes_hydra_overrides_through(compose_train) -> None:
    """`make train ARGS="..."` runs the entry point with the overrides as given; they compose."""
    args = "operator.kernel_size=5 trainer.max_epochs=3"
    command = subprocess.run(
        ["make", "--no-print-directory", "-n", "train", f"ARGS={args}"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.rstrip().splitlines()[-1]  # fmt: skip
    assert command.endswith(f"-m involution.train {args}"), command
    cfg = compose_train(command.split("-m involution.train ", 1)[1].split())
    assert (cfg.operator.kernel_size, cfg.trainer.max_epochs) == (5, 3)


def test_flush_denormal_reaches_threads_started_after_it() -> None:
    """train.py flushes denormals before any pool starts; threads started later (torch's and
    numba's workers) inherit it, so late-training denormal gradients cost nothing extra."""
    code = (
        "import threading, torch\n"
        "torch.set_flush_denormal({flag})\n"
        "out = []\n"
        "t = threading.Thread(target=lambda: out.append(float(torch.tensor([1e-39]) * 2)))\n"
        "t.start(); t.join(); print(out[0])\n"
    )
    values = {}
    for flag in (True, False):
        result = subprocess.run(
            [sys.executable, "-c", code.format(flag=flag)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        values[flag] = float(result.stdout)
    assert values[True] == 0.0
    assert values[False] == pytest.approx(2e-39, rel=1e-3)
