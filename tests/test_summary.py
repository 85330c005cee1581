"""involution.runs.summary: Hydra multiruns on digits are summarised (one row per job) and survive
failing jobs; the joblib launcher and the Optuna sweeper run them too; the summary of a multirun
directory, finished or not, without training; its command line."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from involution.runs import summary
from involution.runs.records import RECORD, read_record

from conftest import REPO, run_module, run_tiny_sweep

# ---------------------------------------------------------------------------------------------
# End to end


def test_sweep_summary_has_one_row_per_job(kernel_sweep) -> None:
    result, sweep_dir = kernel_sweep
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "4 ok, 0 failed" in result.stdout
    # quiet per job: one line as it ends, no config tree, model summary or Lightning notice
    printed = result.stdout + result.stderr
    for noise in ("CONFIG", "┃ Name", "GPU available", "Restoring states", "Test metric"):
        assert noise not in printed, noise
    ended = [line for line in printed.splitlines() if line.startswith("job ")]
    assert [line.split()[:3] for line in ended] == [["job", str(n), "ok"] for n in range(4)]
    frame = summary.load_summary(sweep_dir)
    assert list(frame["job"]) == [0, 1, 2, 3]
    assert list(frame["operator.kernel_size"]) == [3, 3, 5, 5]
    assert list(frame["operator.reduction_ratio"]) == [2, 4, 2, 4]
    assert set(frame["status"]) == {"ok"} and set(frame["error"]) == {""}
    for column in ("params", "macs", "best_val_top1", "best_val_top5", "test_top1", "wall_time_s"):
        assert frame[column].notna().all() and (frame[column] >= 0).all(), column
    assert (
        frame["params"].nunique() == 4
    )  # kernel size and reduction ratio change the kernel generator
    assert all(
        "operator.kernel_size=" in o and "operator.reduction_ratio=" in o
        for o in frame["overrides"]
    )
    for run_dir in frame["run_dir"]:
        assert (Path(run_dir) / "csv" / "metrics.csv").is_file()
    table = (sweep_dir / summary.SUMMARY_MD).read_text()
    assert (
        "| job | operator.kernel_size | operator.reduction_ratio | status |" in table
        and "4 ok, 0 failed" in table
    )
    # the notebooks' reader: the CSV round trip keeps the columns and types
    rebuilt = summary.summarize(sweep_dir, write=False)
    assert list(rebuilt.columns) == list(frame.columns)
    assert rebuilt["best_val_top1"].tolist() == pytest.approx(frame["best_val_top1"].tolist())


def test_failing_job_is_recorded_and_the_next_one_runs(tmp_path: Path) -> None:
    """An invalid kernel size first: the job is recorded as failed, the next job still runs."""
    args = ["-m", "hydra/callbacks=sweep_summary", "operator.kernel_size=4,3"]
    result, sweep_dir = run_tiny_sweep(tmp_path, args)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("1 ok, 1 failed")
    frame = summary.load_summary(sweep_dir)
    assert list(frame["status"]) == ["failed", "ok"]
    assert list(frame["operator.kernel_size"]) == [4, 3]
    error = frame.loc[0, "error"]
    assert error.startswith("SetupError:") and "operator.kernel_size" in error and "\n" not in error
    record = read_record(sweep_dir / "0")
    assert record["status"] == "failed" and record["error"] == error and record["finished"]
    assert frame.loc[1, "best_val_top1"] >= 0 and frame.loc[1, "error"] == ""
    # The summary CLI rebuilds the same table and exits 1 because a job failed.
    cli = run_module("involution.runs", ["summarize", str(sweep_dir)], cwd=tmp_path)
    assert cli.returncode == 1 and cli.stdout.rstrip().endswith("1 ok, 1 failed")


def test_optuna_smoke_two_trials_in_parallel_with_joblib(tmp_path: Path) -> None:
    args = ["hparams_search=digits_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"]
    result, sweep_dir = run_tiny_sweep(
        tmp_path, [*args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    frame = summary.load_summary(sweep_dir)
    assert len(frame) == 2 and set(frame["status"]) == {"ok"}
    assert {"module.lr", "module.weight_decay", "operator.kernel_size"} <= set(frame.columns)
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == pytest.approx(frame["best_val_top1"].max())
    assert best.best_params["operator.kernel_size"] in (3, 5, 7)


def test_make_sweep_uses_the_short_schedule_on_digits_only() -> None:
    def dry(*args: str) -> str:
        return subprocess.run(
            ["make", "--no-print-directory", "-n", "sweep", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    default = dry().rstrip().splitlines()[-1]
    assert (
        "-m involution.train sweep=kernel_reduction " in default
        and "trainer.max_epochs=" in default
    )
    other = dry("SWEEP=operator", "ARGS=data=cifar10 trainer=gpu")
    assert (
        "sweep=operator" in other
        and "trainer.max_epochs" not in other
        and other.rstrip().endswith("data=cifar10 trainer=gpu")
    )
    quick = dry("ARGS=trainer.max_epochs=2").rstrip().splitlines()[-1]  # the README's first sweep
    assert quick.count("trainer.max_epochs") == 1 and "trainer.max_epochs=2" in quick
    assert "data.image_size=16" in quick  # the rest of the short schedule stays


# ---------------------------------------------------------------------------------------------
# The summary of a multirun directory, finished or not, without training


def fake_job(
    root: Path,
    num: int,
    overrides: list[str],
    record: dict | None,
    val: list[tuple[float, float]] = (),
) -> Path:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if record is not None:
        (job / RECORD).write_text(json.dumps({"overrides": overrides, **record}))
    if val:
        (job / "csv").mkdir()
        lines = ["epoch,step,val/acc_top1,val/acc_top5,train/loss"]
        lines += [f"{e},{e},{t1},{t5}," for e, (t1, t5) in enumerate(val)] + ["0,1,,,2.3"]
        (job / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return job


@pytest.fixture
def fake_sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "train" / "2030-01-02" / "03-04-05"
    root.mkdir(parents=True)
    multirun = {
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "params": {"operator.group_channels": "1,16,null"},
            },
            "overrides": {"task": ["sweep=group_channels", "seed=3"]},
        }
    }
    OmegaConf.save(OmegaConf.create(multirun), root / "multirun.yaml")
    common = ["sweep=group_channels", "seed=3"]
    ok = {
        "status": "ok",
        "error": "",
        "params": 1000.0,
        "macs": 2.0e6,
        "wall_time_s": 12.5,
        "metrics": {
            "best/val/acc_top1": 0.9,
            "val/acc_top1": 0.85,
            "val/acc_top5": 0.99,
            "test/acc_top1": 0.88,
        },
    }
    fake_job(
        root,
        0,
        ["operator.group_channels=1", *common],
        ok,
        val=[(0.5, 0.9), (0.9, 0.98), (0.85, 0.99)],
    )
    dead = {"status": "running", "error": "", "host": socket.gethostname(), "pid": 2**22 + 12345}
    fake_job(root, 1, ["operator.group_channels=16", *common], dead, val=[(0.3, 0.8)])
    # job 2 (group_channels=null) has not started: no directory at all
    return root


def test_summary_of_an_unfinished_sweep(fake_sweep: Path) -> None:
    frame = summary.summarize(fake_sweep)
    assert list(frame.columns[:2]) == ["job", "operator.group_channels"]
    assert set(summary.COLUMNS) <= set(frame.columns)
    assert list(frame["status"]) == ["ok", "failed", "missing"]
    assert "ended" in frame.loc[1, "error"]  # a "running" job whose process is gone
    assert frame.loc[0, "best_val_top1"] == pytest.approx(0.9)
    assert frame.loc[0, "best_val_top5"] == pytest.approx(0.98)  # top-5 of the best top-1 epoch
    assert frame.loc[0, "test_top1"] == pytest.approx(0.88) and frame.loc[0, "epochs"] == 3
    assert frame.loc[1, "best_val_top1"] == pytest.approx(0.3)  # progress so far, from the CSV
    assert (
        frame.loc[2, "overrides"] == "operator.group_channels=null sweep=group_channels seed=3"
    )  # multirun.yaml
    assert (
        frame["operator.group_channels"].iloc[2] != frame["operator.group_channels"].iloc[2]
    )  # null -> NaN
    assert summary.count_line(frame) == "1 ok, 1 failed, 1 missing"
    back = summary.load_summary(fake_sweep / summary.SUMMARY_CSV)
    assert list(back.columns) == list(frame.columns) and list(back["status"]) == list(
        frame["status"]
    )
    assert back["error"].tolist() == frame["error"].tolist()
    assert "| 2 | null | missing |" in (fake_sweep / summary.SUMMARY_MD).read_text()


def test_summary_of_a_finished_sweep_counts_missing_as_failed(fake_sweep: Path) -> None:
    frame = summary.summarize(fake_sweep, finished=True)
    assert list(frame["status"]) == ["ok", "failed", "failed"]
    assert summary.count_line(frame) == "1 ok, 2 failed"


def test_summarize_cli_finds_the_latest_multirun(fake_sweep: Path) -> None:
    cwd = fake_sweep.parents[3]
    result = run_module("involution.runs", ["summarize"], cwd=cwd)
    assert result.returncode == 1 and result.stdout.rstrip().endswith(
        "1 ok, 1 failed, 1 missing"
    ), result.stderr
    missing = run_module("involution.runs", ["summarize", "nowhere"], cwd=cwd)
    assert missing.returncode == 2 and missing.stderr.startswith("error:")


@pytest.mark.parametrize(
    ("task", "shown", "absent"),
    [
        ("detection", ["val AP %", "val AP50 %", "val mask AP %", "test AP %"], "top-1"),
        ("segmentation", ["val mIoU %", "val pixel acc %", "test mIoU %"], "top-1"),
    ],
)
def test_summary_table_shows_the_tasks_metrics(
    task: str, shown: list[str], absent: str, tmp_path: Path
) -> None:
    """A detection or segmentation sweep's table reads the task's metrics (the best epoch's of
    the metric its jobs are judged by, and the test split's), not classification's top-1."""
    from conftest import write_task_sweep

    root = write_task_sweep(tmp_path / "sweep", task)
    frame = summary.summarize(root)
    table = summary.to_markdown(frame)
    head = table.splitlines()[0]
    assert all(column in head for column in shown) and absent not in head, head
    metric = {"detection": "map", "segmentation": "miou"}[task]
    best = frame.loc[frame["job"] == 3, f"best_val_{metric}"].item()
    assert best == pytest.approx(0.1 * 3 + 0.05 * 3) and frame["best_epoch"].tolist() == [2] * 4
    assert f"{100 * best:.2f}" in table
