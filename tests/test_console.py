"""What a run shows: the log records' routing (one line per warning on the console, the rest in
the run's log), the header (what runs, a recipe written for other data, the architecture an
evaluation really loads) and the closing summary of every outcome, task by task."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

from involution.eval import options
from involution.models import create_model
from involution.runner.build import build
from involution.runner.console import (
    FILE_ONLY,
    ConsoleFilter,
    ConsoleFormatter,
    closing_lines,
    header_lines,
    job_line,
    log_warning,
    recipe_note,
)
from involution.runner.details import evaluated_config
from involution.runner.outcome import Outcome
from involution.runner.preflight import SetupError

from conftest import CSV_ONLY, TINY_MODEL, compose_entry

# ---------------------------------------------------------------------------------------------
# Log records


def record(level: int, message: str, **extra) -> logging.LogRecord:
    made = logging.LogRecord("involution.x", level, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


def test_console_shows_our_lines_plainly_and_warnings_in_one_line() -> None:
    formatter, keep = ConsoleFormatter(), ConsoleFilter()
    assert formatter.format(record(logging.INFO, "model  rednet26")) == "model  rednet26"
    warned = formatter.format(record(logging.WARNING, "first line\nsecond line"))
    assert warned.startswith("warning: ") and "first line" in warned and "\n" not in warned
    assert not keep.filter(record(logging.INFO, "for the log", **FILE_ONLY))
    assert keep.filter(record(logging.INFO, "for both"))


def test_a_line_logged_during_a_progress_bar_gets_a_line_of_its_own() -> None:
    import io

    from tqdm import tqdm

    from involution.runner.console import ConsoleHandler

    stream = io.StringIO()
    handler = ConsoleHandler(stream)
    handler.setFormatter(ConsoleFormatter())
    with tqdm(total=10, file=stream, desc="Epoch 0", mininterval=0) as bar:
        bar.update(3)
        handler.emit(record(logging.WARNING, "SIGTERM: checkpoint saved"))
        bar.update(1)
    lines = stream.getvalue().replace("\r", "\n").splitlines()
    assert "warning: SIGTERM: checkpoint saved" in lines  # the whole line, not after the bar
    assert any(line.startswith("Epoch 0") and "4/10" in line for line in lines)  # drawn again


def test_python_warnings_become_records_library_deprecations_stay_in_the_log(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="py.warnings"):
        log_warning(FutureWarning("old API"), FutureWarning, "/x/site-packages/lib/a.py", 3)
        log_warning(UserWarning("check your data"), UserWarning, "/home/me/train.py", 7)
    library, ours = caplog.records
    assert "FutureWarning" in library.getMessage() and "a.py:3" in library.getMessage()
    assert not ConsoleFilter().filter(library) and ConsoleFilter().filter(ours)
    shown = ConsoleFormatter().format(ours)
    assert shown.startswith("warning: UserWarning: check your data") and "train.py:7" in shown


# ---------------------------------------------------------------------------------------------
# The header


@pytest.mark.parametrize(
    ("experiment", "data", "flagged", "named"),
    [
        ("digits", "cifar10", True, "experiment=cifar10"),  # the recipe written for cifar10
        ("digits", "synthetic", True, "data=synthetic"),  # none is written for it
        ("digits", "digits", False, None),
        ("cifar10", "cifar10", False, None),
        (None, "cifar10", False, None),  # evaluation: no experiment, no recipe
    ],
)
def test_a_recipe_written_for_other_data_is_named(experiment, data, flagged, named) -> None:
    note = recipe_note(experiment, data)
    assert (note is not None) == flagged
    if flagged:
        assert f"experiment={experiment}" in note and named in note and "\n" not in note


def test_evaluation_shows_the_architecture_it_loads(tmp_path: Path) -> None:
    """A convolution checkpoint evaluated with the default (involution) groups: the header and
    the saved config tree say convolution."""
    arguments = {**TINY_MODEL, "operator": {"name": "convolution", "kernel_size": 3}}
    model = create_model(**arguments)
    path = tmp_path / "conv.ckpt"
    torch.save(
        {
            "pytorch-lightning_version": "2.6.6",
            "hyper_parameters": {"model": arguments},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        },
        path,
    )
    cfg = compose_entry("eval", tmp_path / "eval", [*CSV_ONLY, f"ckpt_path={path}"])
    assert cfg.operator.name == "involution"
    run = build(cfg, **options(cfg))
    header = "\n".join(header_lines(run))
    assert "convolution" in header and "involution" not in header
    assert str(path.name) in header and "base_width=4" in header
    shown = evaluated_config(cfg, run)
    assert shown.operator.name == "convolution" and shown.model.base_width == 4


# ---------------------------------------------------------------------------------------------
# The closing summary


def fake_run_dir(run_dir: Path, rows: list[dict[str, float]]) -> None:
    """csv/metrics.csv with validation rows (epoch + metrics) and a best and last checkpoint."""
    (run_dir / "csv").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    columns = ["epoch", "step", *dict.fromkeys(k for row in rows for k in row if k != "epoch")]
    with (run_dir / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({"step": 10 * row["epoch"], **row})
    best = max(rows, key=lambda row: next(v for k, v in row.items() if k.startswith("val/")))
    (run_dir / "checkpoints" / f"best-epoch{int(best['epoch']):03d}.ckpt").write_bytes(b"x")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")


TASKS = {
    "classification": (
        "val/acc_top1",
        [
            {"epoch": 0, "val/acc_top1": 0.5, "val/acc_top5": 0.9},
            {"epoch": 1, "val/acc_top1": 0.9741, "val/acc_top5": 0.9963},
            {"epoch": 2, "val/acc_top1": 0.96, "val/acc_top5": 0.999},
        ],
        {"test/acc_top1": 0.9815, "test/acc_top5": 0.9981},
        ["97.41", "99.63", "98.15"],
    ),
    "detection": (
        "val/map",
        [
            {"epoch": 0, "val/map": 0.2, "val/map_50": 0.4, "val/mask_map": 0.15},
            {"epoch": 1, "val/map": 0.4123, "val/map_50": 0.6512, "val/mask_map": 0.3644},
        ],
        {"test/map": 0.4051, "test/mask_map": 0.3502},
        ["41.23", "65.12", "36.44", "40.51", "35.02"],
    ),
    "segmentation": (
        "val/miou",
        [
            {"epoch": 0, "val/miou": 0.3, "val/pixel_acc": 0.8},
            {"epoch": 1, "val/miou": 0.6789, "val/pixel_acc": 0.9345},
        ],
        {"test/miou": 0.6621},
        ["67.89", "93.45", "66.21"],
    ),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_closing_summary_of_a_finished_run(task: str, compose_train, tmp_path: Path) -> None:
    metric, rows, tests, values = TASKS[task]
    cfg = compose_train([f"optimized_metric={metric}"])
    run_dir = Path(cfg.paths.output_dir)
    fake_run_dir(run_dir, rows)
    best = max(v[metric] for v in rows)
    outcome = Outcome("ok", {f"best/{metric}": best, **tests}, best)
    sync = run_dir / "wandb" / "offline-run-1"
    text = "\n".join(closing_lines(cfg, outcome, None, {"mode": "offline", "dir": str(sync)}, 75))
    for value in values:  # the best epoch's headline metrics and the test split's, in %
        assert value in text, (value, text)
    assert "epoch 1" in text and "ok" in text.splitlines()[0] and "1 min 15 s" in text
    best_ckpt = run_dir / "checkpoints" / "best-epoch001.ckpt"
    for path in (run_dir, best_ckpt, run_dir / "checkpoints" / "last.ckpt"):
        assert str(path) in text
    assert f"wandb sync {sync}" in text and f"make eval CKPT={best_ckpt}" in text
    online = closing_lines(cfg, outcome, None, {"mode": "online", "url": "https://w.ai/r/1"})
    assert any("https://w.ai/r/1" in line for line in online)


def test_closing_summary_of_runs_that_did_not_finish(compose_train) -> None:
    cfg = compose_train([])
    run_dir = Path(cfg.paths.output_dir)
    fake_run_dir(run_dir, TASKS["classification"][1])
    last = str(run_dir / "checkpoints" / "last.ckpt")
    stopped = Outcome("preempted", message="preempted: SIGTERM", exit_code=143, checkpoint=last)
    text = "\n".join(closing_lines(cfg, stopped, None))
    assert "preempted" in text and f"resume={run_dir}" in text and "97.41" in text
    bad = run_dir.parent / "bad"
    (bad / ".hydra").mkdir(parents=True)
    cfg = compose_train([f"paths.output_dir={bad}"])
    error = SetupError("model.checkpoint: of another architecture")
    failed = Outcome("failed", message=str(error), exit_code=2, recorded=error)
    text = "\n".join(closing_lines(cfg, failed, None))
    assert "another architecture" in text and str(bad) in text and ".hydra" in text
    assert "make eval" not in text


def test_a_sweep_job_is_one_line(compose_train) -> None:
    cfg = compose_train(["operator.kernel_size=5"])
    run_dir = Path(cfg.paths.output_dir)
    fake_run_dir(run_dir, TASKS["classification"][1])
    ok = Outcome("ok", {"best/val/acc_top1": 0.9741, "test/acc_top1": 0.9815}, 0.9741)
    line = job_line(cfg, ok, 3, 41.0)
    assert "\n" not in line and line.startswith("job 3 ok")
    assert all(part in line for part in ("operator.kernel_size=5", "97.41", "98.15", "41 s"))
    failed = Outcome("failed", message="operator.kernel_size must be odd", exit_code=2)
    line = job_line(cfg, failed, 4)
    assert "failed" in line and "must be odd" in line and "\n" not in line
