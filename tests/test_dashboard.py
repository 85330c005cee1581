"""The W&B dashboard of a sweep (wandb-workspaces), built without network for a real tiny sweep:
its panels read the keys the sweep's runs really log, and its run filter is the sweep's group."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import wandb_workspaces.reports.v2 as wr

from involution import runs
from involution.runs import dashboard

from conftest import REPO, run_module

WANDB = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
GROUP = "kernel_reduction-2030-01-02_03-04-05"
SWEPT = ["operator.kernel_size", "operator.reduction_ratio"]


def records(wandb_file: Path) -> list[dict]:
    import subprocess

    out = subprocess.run(
        [WANDB, "leet", "inspect", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def run_filter(workspace) -> list[dict]:
    """The runset filters of the definition W&B receives."""
    return dashboard.definition(workspace)["spec"]["section"]["runSets"][0]["filters"]["filters"]


@pytest.fixture(scope="module")
def built(kernel_sweep):
    result, sweep_dir = kernel_sweep
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    sweep = dashboard.read_sweep(sweep_dir)
    charts = dashboard.sweep_charts(sweep)
    return sweep, charts, dashboard.build_workspace(sweep, charts)


@pytest.mark.slow
def test_sweep_is_read_from_its_records(built) -> None:
    sweep, _, _ = built
    assert (sweep.name, sweep.group, sweep.project, sweep.swept) == (
        "kernel_reduction",
        GROUP,
        "involution",
        SWEPT,
    )


@pytest.mark.slow
def test_line_per_reduction_ratio_against_kernel_size(built) -> None:
    sweep, charts, _ = built
    assert list(charts) == ["sweep/best_val_top1_vs_kernel_size", "sweep/best_val_top1_vs_macs"]
    chart = charts["sweep/best_val_top1_vs_kernel_size"]
    assert chart.spec.spec_name == "wandb/lineseries/v0"
    rows = chart.table.data  # [x, line, y]
    frame = sweep.frame
    expected = [
        [k, f"reduction_ratio={r}", pytest.approx(b)]
        for k, r, b in zip(frame[SWEPT[0]], frame[SWEPT[1]], frame["best_val_top1"])
    ]
    assert sorted(rows, key=lambda row: (row[1], row[0])) == sorted(
        expected, key=lambda row: (row[1], row[0])
    )
    per_operator = charts["sweep/best_val_top1_vs_macs"].table.data
    assert {row[1] for row in per_operator} == {"operator=involution"}
    assert sorted(row[0] for row in per_operator) == sorted(frame["macs"])


@pytest.mark.slow
def test_workspace_panels_keys_and_run_filter(built) -> None:
    sweep, charts, workspace = built
    ablation, curves, table = workspace.sections  # the run filter: the sweep's group
    assert [s.name for s in workspace.sections] == [
        f"Ablation: {', '.join(SWEPT)}",
        "Training curves",
        "Summary",
    ]
    kinds = [type(p).__name__ for p in ablation.panels]
    assert kinds == ["CustomChart", "ParallelCoordinatesPlot", "CustomChart", "ScatterPlot"]
    for panel, key in (
        (ablation.panels[0], "sweep/best_val_top1_vs_kernel_size"),
        (ablation.panels[2], "sweep/best_val_top1_vs_macs"),
    ):
        assert (
            panel.query == {"summaryTable": {"tableKey": f"{key}_table"}}
            and panel.chart_name == "wandb/lineseries/v0"
        )
        assert panel.chart_fields == charts[key].spec.fields
    columns = [c.metric for c in ablation.panels[1].columns]
    assert columns == [
        wr.Config("config.operator.kernel_size"),
        wr.Config("config.operator.reduction_ratio"),
        wr.SummaryMetric(dashboard.BEST),
        wr.SummaryMetric(dashboard.TEST),
    ]
    scatter = ablation.panels[3]
    assert (scatter.x, scatter.y) == (wr.Config("macs"), wr.SummaryMetric(dashboard.BEST))
    grouped = [p.groupby for p in curves.panels if p.groupby is not None]
    assert grouped == [wr.Config(f"config.{k}") for k in SWEPT]
    assert all(p.y == ["val/acc_top1"] for p in curves.panels[:2])
    assert [p.table_name for p in table.panels] == [dashboard.TABLE_KEY]
    assert run_filter(workspace) == [
        {"key": {"section": "run", "name": "group"}, "op": "=", "value": GROUP, "disabled": False}
    ]


@pytest.mark.slow
def test_panel_keys_are_what_the_runs_log(built) -> None:
    """Config, summary and history keys the panels read, found in a job's offline W&B run."""
    sweep, _, _ = built
    job = records(next(Path(sweep.frame["run_dir"][0]).glob("wandb/offline-run-*/run-*.wandb")))
    config = {}
    for record in job:
        if record["type"] == "run":
            config.update(record["run"].get("config", {}).get("update", {}))
        if record["type"] == "config":
            config.update(record["config"].get("update", {}))
    assert {"config", "macs"} <= set(config)
    assert config["config"]["operator"]["kernel_size"] == sweep.frame[SWEPT[0]][0]
    summary = {
        k: v for r in job if r["type"] == "summary" for k, v in r["summary"]["update"].items()
    }
    assert summary[dashboard.BEST] == pytest.approx(sweep.frame["best_val_top1"][0])
    assert dashboard.TEST in summary
    history = {k for r in job if r["type"] == "history" for k in r["history"]["item"]}
    assert {"epoch", "val/acc_top1", "train/loss_epoch"} <= history


@pytest.mark.slow
def test_cli_offline_writes_the_definition_and_says_what_to_sync(
    kernel_sweep, tmp_path: Path
) -> None:
    _, sweep_dir = kernel_sweep
    copy = tmp_path / "multirun" / "2030-01-02" / "03-04-05"
    shutil.copytree(sweep_dir, copy)
    result = run_module("involution.runs", ["dashboard", str(copy)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"wandb sync {copy}/*/wandb/offline-run-* " in result.stdout
        and f"make dashboard DIR={copy}" in result.stdout
    )
    workspace = dashboard.load_definition(copy / dashboard.DEFINITION)  # a valid W&B view spec
    assert [s.name for s in workspace.sections][1:] == ["Training curves", "Summary"]
    assert run_filter(workspace)[0]["value"] == GROUP
    summary_run = records(next(copy.glob("wandb/offline-run-*-sweep-summary-*/run-*.wandb")))
    run = next(r["run"] for r in summary_run if r["type"] == "run")
    assert (run["run_group"], run["job_type"]) == (GROUP, dashboard.JOB_TYPE)
    logged = {k for r in summary_run if r["type"] == "history" for k in r["history"]["item"]}
    assert {
        f"{dashboard.TABLE_KEY}._type",
        "sweep/best_val_top1_vs_kernel_size_table._type",
    } <= logged
    assert not (copy / dashboard.URL_FILE).exists()


def test_cli_bad_directory_is_one_line(tmp_path: Path, capsys) -> None:
    assert dashboard.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: DIR=") and "nowhere" in err[0]


def test_csv_only_sweep_has_no_dashboard(tmp_path: Path) -> None:
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- operator.kernel_size=3\n")
    (job / ".hydra" / "config.yaml").write_text("logger:\n  csv:\n    save_dir: x\n")
    record = {"status": "ok", "group": "g", "metrics": {}}
    (job / runs.RECORD).write_text(json.dumps({**record, "overrides": ["operator.kernel_size=3"]}))
    (tmp_path / "1").mkdir()
    overrides = ["operator.kernel_size=5"]
    (tmp_path / "1" / runs.RECORD).write_text(json.dumps({**record, "overrides": overrides}))
    with pytest.raises(dashboard.DashboardError, match="logged no W&B runs"):
        dashboard.read_sweep(tmp_path)


def test_make_dashboard_passes_the_directory() -> None:
    import subprocess

    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "dashboard", "DIR=multirun/train/x/y"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.rstrip().splitlines()[-1].endswith("-m involution.runs dashboard multirun/train/x/y")


def test_operator_sweep_gets_bars_and_one_macs_line_per_operator(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame({
        "job": [0, 1, 2], "operator": ["involution", "convolution", "attention"],
        "status": ["ok"] * 3, "best_val_top1": [0.9, 0.8, 0.85], "macs": [2.0e7, 4.0e7, 3.0e7],
        "name": ["involution-d1-gc16-k7-r4", "convolution-d1-g1-k3", "attention-d1-h8-k7"],
    })  # fmt: skip
    sweep = dashboard.Sweep(
        tmp_path,
        "operator",
        "operator-2030-01-02_03-04-05",
        "involution",
        None,
        ["operator"],
        frame,
    )
    charts = dashboard.sweep_charts(sweep)
    assert list(charts) == ["sweep/best_val_top1_by_operator", "sweep/best_val_top1_vs_macs"]
    bars = charts["sweep/best_val_top1_by_operator"]
    assert bars.spec.spec_name == "wandb/bar/v0" and sorted(bars.table.data) == [
        ["attention", 0.85],
        ["convolution", 0.8],
        ["involution", 0.9],
    ]
    assert sorted(row[1] for row in charts["sweep/best_val_top1_vs_macs"].table.data) == [
        "operator=attention",
        "operator=convolution",
        "operator=involution",
    ]
    workspace = dashboard.build_workspace(sweep, charts)
    assert workspace.sections[0].panels[0].chart_name == "wandb/bar/v0"


@pytest.mark.parametrize(
    ("task", "charted", "header"),
    [
        ("classification", ["best_val_top1"], "val top-1 %"),
        ("detection", ["best_val_map", "best_val_mask_map"], "val AP %"),
        ("segmentation", ["best_val_miou"], "val mIoU %"),
    ],
)
def test_offline_dashboard_is_one_self_contained_page_of_the_tasks_charts(
    task: str, charted: list[str], header: str, tmp_path: Path, capsys
) -> None:
    """Without W&B (a CSV-only sweep): PNG charts of the metric the sweep is judged by against
    each swept key and against multiply-adds, its curves by each swept key, the training loss,
    and one HTML page with the images embedded and the summary table; the command prints its
    path."""
    import base64
    import io
    import re

    import numpy as np
    from matplotlib.image import imread

    from conftest import write_task_sweep

    root = write_task_sweep(tmp_path / "multirun" / "x", task)
    assert dashboard.main([str(root)]) == 0
    out = capsys.readouterr().out
    page = root / "dashboard.html"
    assert str(page) in out and "no W&B workspace" in out
    expected = {
        f"{column}_vs_{key}" for column in charted for key in ("kernel_size", "neck_operator")
    }
    expected |= {f"{column}_vs_macs" for column in charted} | {"training_loss"}
    primary = charted[0].removeprefix("best_val_")
    expected |= {f"val_{primary}_by_kernel_size", f"val_{primary}_by_neck_operator"}
    assert {p.stem for p in (root / "dashboard").glob("*.png")} == expected
    text = page.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == len(expected)
    assert not re.findall(r'src="(?!data:)', text)  # nothing fetched from elsewhere
    for data in images:
        pixels = imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert float(np.std(pixels[..., :3])) > 0.01  # not blank
    assert header in text
    assert task == "classification" or "top-1" not in text  # the task's metrics, not top-1
    best = json.loads((root / "3" / runs.RECORD).read_text())["metrics"]
    judged = {"classification": "val/acc_top1", "detection": "val/map", "segmentation": "val/miou"}
    assert f"{100 * best['best/' + judged[task]]:.2f}" in text  # the best job's value, in %
