"""Debug modes (conf/debug): debug=fdr|overfit|limit|profiler, each a real short run on digits."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from involution import runs

from conftest import TINY_DEBUG, run_module


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))


@pytest.mark.parametrize("mode", ["fdr", "overfit", "limit", "profiler"])
def test_debug_mode_composes_without_wandb(compose_train, mode: str) -> None:
    cfg = compose_train([f"debug={mode}"])
    assert cfg.task_name == "debug" and "wandb" not in cfg.logger and cfg.data.num_workers == 0
    trainer = cfg.trainer
    expected = {
        "fdr": trainer.get("fast_dev_run") is True,
        "overfit": trainer.get("overfit_batches") == 2 and cfg.test is False,
        "limit": (trainer.limit_train_batches, trainer.max_epochs) == (5, 2),
        "profiler": trainer.get("profiler", {}).get("_target_", "").endswith("SimpleProfiler"),
    }
    assert expected[mode]


@pytest.mark.slow
def test_fast_dev_run_runs_one_batch_and_logs_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["debug=fdr", *TINY_DEBUG, f"hydra.run.dir={run_dir}"]
    result = run_module("involution.train", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "Running in `fast_dev_run` mode: will run the requested loop using 1 batch(es)"
        in result.stdout + result.stderr
    )
    assert (
        not list(run_dir.glob("checkpoints/best-*.ckpt"))
        and not (run_dir / "csv" / "metrics.csv").exists()
    )
    assert runs.read_record(run_dir)["status"] == "ok"


@pytest.mark.slow
def test_overfit_fits_the_same_two_batches(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    schedule = ["trainer.max_epochs=5", "trainer.check_val_every_n_epoch=5"]
    args = ["debug=overfit", *schedule, *TINY_DEBUG, f"hydra.run.dir={run_dir}"]
    result = run_module("involution.train", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "requested to overfit" in result.stdout + result.stderr  # Lightning turned shuffling off
    rows = [r for r in metric_rows(run_dir) if r.get("train/loss_epoch")]
    assert [int(r["step"]) for r in rows] == [2 * e + 1 for e in range(5)]  # two batches an epoch
    losses = [float(r["train/loss_epoch"]) for r in rows]
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.slow
def test_limit_runs_the_whole_pipeline_on_a_few_batches(limit_run) -> None:
    result, run_dir = limit_run
    assert result.returncode == 0, result.stderr[-3000:]
    names = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in names and any(n.startswith("best-") for n in names)
    rows = metric_rows(run_dir)
    epochs = [r for r in rows if r.get("train/loss_epoch")]
    assert [int(r["step"]) for r in epochs] == [4, 9]  # 2 epochs x 5 batches
    assert any(r.get("test/acc_top1") for r in rows)


@pytest.mark.slow
def test_profiler_writes_its_report_into_the_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shorter = [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ]
    args = ["debug=profiler", *shorter, *TINY_DEBUG, f"hydra.run.dir={run_dir}"]
    result = run_module("involution.train", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (run_dir / "fit-profile.txt").read_text()
    assert (
        "Profiler Report" in report
        and "run_training_epoch" in report
        and "SingleDeviceStrategy.training_step" in report
    )
    assert "Profiler Report" in (run_dir / "test-profile.txt").read_text()
