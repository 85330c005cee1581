"""A W&B dashboard for a sweep, built with W&B's own ``wandb-workspaces`` library.

``python -m involution.runs dashboard [multirun dir]``
(``make dashboard DIR=multirun/train/<date>/<time>``; default: the latest multirun). The sweep's
jobs are W&B runs in one group (involution.runs.identity); the dashboard is a saved W&B *workspace
view* of that group with three sections:

- **Ablation**: the best of the metric the sweep is judged by (its ``optimized_metric``: val
  top-1, box AP, mIoU; a Mask R-CNN sweep's mask AP too, ``involution.runs.metrics``) against
  the first numeric swept key, one line per value of the other swept keys (kernel_reduction:
  against kernel size, one line per reduction ratio); a parallel-coordinates panel over the swept
  keys, the best and the test metric; the best against multiply-adds, one line per operator; the
  same as a per-run scatter plot.
- **Training curves**: the validation metric grouped by each swept key (mean and min-max band),
  and per run that metric and the training loss.
- **Summary**: the sweep's summary table (involution.runs.summarize).

Without a W&B account the same charts are rendered as PNG files and one self-contained HTML page
in the multirun directory (:mod:`involution.runs.render`), in every mode.

The two line charts and the table are data of the sweep as a whole, not of one run: they are
logged (``wandb.plot.line_series``, ``wandb.Table``) by one extra run of the group, job type
``sweep-summary``, whose id is derived from the group so that rebuilding updates it. The
workspace's run filter is the group.

Online (logged in, host reachable) the workspace is saved and its URL printed and written to
``<dir>/dashboard.url``. In every mode its definition (the view spec that ``save()`` uploads) is
written to ``<dir>/dashboard.json``, the charts to ``<dir>/dashboard.html``; offline the command
says what to sync and to rerun.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from involution import runs
from involution.runs.charts import (
    DashboardError,
    Judged,
    finite,
    key_leaf,
    numeric_keys,
    operator_names,
    read_table,
    series,
    sweep_name,
)
from involution.runs.render import render_sweep
from involution.runs.wandb_mode import resolve_wandb_mode

if TYPE_CHECKING:
    import pandas as pd
    import wandb_workspaces.workspaces as ws

# A classification sweep's keys (each sweep reads its own: Sweep.best, Sweep.test)
BEST = "best/val/acc_top1"
TEST = "test/acc_top1"
TABLE_KEY = "sweep/summary"
DEFINITION = "dashboard.json"
URL_FILE = "dashboard.url"
JOB_TYPE = runs.SUMMARY_JOB_TYPE


@dataclass
class Sweep(Judged):
    """What the dashboard needs to know about a multirun directory."""

    root: Path
    name: str
    group: str
    project: str
    entity: str | None
    swept: list[str]
    frame: pd.DataFrame = field(repr=False)
    metric: str = "val/acc_top1"  # the optimized metric of its jobs

    @property
    def best(self) -> str:
        """The W&B summary key of each run's best (the checkpoint callback's)."""
        return f"best/{self.metric}"

    @property
    def test(self) -> str:
        return f"test/{self.primary.key}"

    @property
    def curve(self) -> str:
        """The history key of the judged metric, one point per validated epoch."""
        return f"val/{self.primary.key}"


def config_key(key: str) -> str:
    """The W&B config path of a swept Hydra key: each run logs its composed config as
    ``config``."""
    return f"config.{key}"


def _job_config(root: Path, frame: pd.DataFrame) -> dict[str, Any]:
    for run_dir in [*frame["run_dir"], *(str(p) for p in sorted(root.glob("*/")))]:
        path = Path(run_dir) / ".hydra" / "config.yaml"
        if path.is_file():
            data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            if isinstance(data, dict):
                return data
    return {}


def read_sweep(root: str | Path, project: str | None = None, entity: str | None = None) -> Sweep:
    """The sweep's summary, swept keys, W&B group and project; DashboardError when it has none."""
    table = read_table(root)
    root, frame = table.root, table.frame
    groups = sorted({g for g in frame["group"] if g})
    if len(groups) != 1:
        found = ", ".join(groups) or f"none (no job wrote its {runs.RECORD})"
        raise DashboardError(f"{root}: a dashboard shows one W&B group, the jobs have {found}")
    config = _job_config(root, frame)
    wandb_cfg = (config.get("logger") or {}).get("wandb")
    if wandb_cfg is None and project is None:
        raise DashboardError(
            f"{root}: the sweep logged no W&B runs (logger has no wandb entry); "
            "rerun it with logger=default"
        )
    wandb_cfg = wandb_cfg or {}
    return Sweep(
        root=root,
        name=str(sweep_name(root) or groups[0].rsplit("-", 2)[0]),
        group=groups[0],
        project=project or str(wandb_cfg.get("project") or "involution"),
        entity=entity or wandb_cfg.get("entity"),
        swept=table.swept,
        frame=frame,
        metric=table.metric,
    )


# ---------------------------------------------------------------------------------------------
# The sweep-level charts (data logged by the summary run)


def sweep_charts(sweep: Sweep) -> dict[str, Any]:
    """W&B custom charts of the sweep as a whole, by history key (``wandb.plot`` objects): each
    charted metric (``Judged.charted``: the judged one, a Mask R-CNN's mask AP) against the first
    numeric swept key (bars by the first key when none is numeric) and against multiply-adds."""
    import wandb

    frame = sweep.frame
    numeric = numeric_keys(sweep)
    with_ops = frame.assign(operator=operator_names(frame))
    with_ops = with_ops[with_ops["macs"].map(finite)]
    charts: dict[str, Any] = {}
    for metric in sweep.charted():
        column, shown = f"best_val_{metric.column}", f"best val {metric.label}"
        if numeric:
            x = numeric[0]
            others = [k for k in sweep.swept if k != x]
            xs, ys, keys = series(frame, x, others, column)
            by = " x ".join(key_leaf(k) for k in others) or "all jobs"
            charts[f"sweep/{column}_vs_{key_leaf(x)}"] = wandb.plot.line_series(
                xs, ys, keys=keys, title=f"{shown} vs {key_leaf(x)} (one line per {by})", xname=x
            )
        else:  # a categorical sweep (operator=...): one bar per value
            x = sweep.swept[0]
            done = frame[(frame["status"] == "ok") & frame[column].map(finite)]
            table = wandb.Table(
                columns=[x, column],
                data=[[str(a), float(b)] for a, b in zip(done[x], done[column])],
            )
            charts[f"sweep/{column}_by_{key_leaf(x)}"] = wandb.plot.bar(
                table, x, column, title=f"{shown} by {x}"
            )
        xs, ys, keys = series(with_ops, "macs", ["operator"], column)
        charts[f"sweep/{column}_vs_macs"] = wandb.plot.line_series(
            xs,
            ys,
            keys=keys,
            title=f"{shown} vs multiply-adds per image (one line per operator)",
            xname="macs",
        )
    return charts


def summary_table(frame: pd.DataFrame):
    """The summary as a ``wandb.Table`` (NaN cells empty)."""
    import wandb

    clean = frame.astype(object).where(frame.notna(), None)
    return wandb.Table(dataframe=clean)


# ---------------------------------------------------------------------------------------------
# The workspace


def chart_panel(key: str, chart: Any):
    """The panel showing a chart logged under ``key``: the same spec, fields and table."""
    import wandb_workspaces.reports.v2 as wr

    spec = chart.spec
    panel = wr.CustomChart.from_table(
        f"{key}_table", chart_fields=dict(spec.fields), chart_strings=dict(spec.string_fields)
    )
    panel.chart_name = spec.spec_name
    panel.layout = wr.Layout(w=12, h=8)
    return panel


def build_workspace(
    sweep: Sweep, charts: dict[str, Any], entity: str | None = None
) -> ws.Workspace:
    """The workspace view of the sweep's group (no network needed to build it)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    keys = [config_key(k) for k in sweep.swept]
    best, test = sweep.best, sweep.test
    shown = sweep.primary.label
    ablation = [
        *(chart_panel(key, chart) for key, chart in charts.items() if not key.endswith("_vs_macs")),
        wr.ParallelCoordinatesPlot(
            title=f"swept keys -> best val {shown}",
            columns=[
                *(
                    wr.ParallelCoordinatesPlotColumn(
                        metric=wr.Config(k), display_name=k.split(".", 1)[1]
                    )
                    for k in keys
                ),
                wr.ParallelCoordinatesPlotColumn(
                    metric=wr.SummaryMetric(best), display_name=f"best val {shown}"
                ),
                wr.ParallelCoordinatesPlotColumn(
                    metric=wr.SummaryMetric(test), display_name=f"test {shown}"
                ),
            ],
            layout=wr.Layout(w=12, h=8),
        ),
        *(chart_panel(key, chart) for key, chart in charts.items() if key.endswith("_vs_macs")),
        wr.ScatterPlot(
            title=f"best val {shown} vs multiply-adds (per run)",
            x=wr.Config("macs"),
            y=wr.SummaryMetric(best),
            layout=wr.Layout(w=12, h=8),
        ),
    ]
    curves = [
        wr.LinePlot(
            title=f"val {shown} by {key}",
            x="epoch",
            y=[sweep.curve],
            groupby=wr.Config(config_key(key)),
            groupby_aggfunc="mean",
            groupby_rangefunc="minmax",
            layout=wr.Layout(w=8, h=6),
        )
        for key in sweep.swept
    ]
    curves += [
        wr.LinePlot(
            title=f"val {shown} (per run)", x="epoch", y=[sweep.curve], layout=wr.Layout(w=8, h=6)
        ),
        wr.LinePlot(
            title="training loss (per run)",
            x="epoch",
            y=["train/loss_epoch"],
            layout=wr.Layout(w=8, h=6),
        ),
    ]
    table = [wr.WeavePanelSummaryTable(table_name=TABLE_KEY, layout=wr.Layout(w=24, h=10))]
    return ws.Workspace(
        entity=entity or sweep.entity or "",
        project=sweep.project,
        name=f"{sweep.name} sweep {sweep.group}",
        sections=[
            ws.Section(name=f"Ablation: {', '.join(sweep.swept)}", panels=ablation, is_open=True),
            ws.Section(name="Training curves", panels=curves, is_open=True),
            ws.Section(name="Summary", panels=table, is_open=True),
        ],
        runset_settings=ws.RunsetSettings(
            filters=f"Metric('Group') == '{sweep.group}'",
            pinned_columns=[
                *(f"config:{k.split('.', 1)[0]}.value.{k.split('.', 1)[1]}" for k in keys),
                f"summary:{best}",
                f"summary:{test}",
                "config:macs.value",
            ],
            order=[ws.Ordering(ws.Summary(best), ascending=False)],
        ),
    )


def definition(workspace: ws.Workspace) -> dict[str, Any]:
    """The view spec ``Workspace.save()`` uploads (wandb-workspaces has no public serializer)."""
    return workspace._to_model().model_dump(by_alias=True, exclude_none=True)


def load_definition(path: str | Path) -> ws.Workspace:
    """A workspace back from ``dashboard.json`` (e.g. to save it later:
    ``load_definition(p).save()``)."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.workspaces import internal

    return ws.Workspace._from_model(
        internal.View.model_validate(json.loads(Path(path).read_text()))
    )


# ---------------------------------------------------------------------------------------------
# The summary run and the command


def summary_run_id(sweep: Sweep) -> str:
    digest = hashlib.sha1(f"{sweep.project}/{sweep.group}".encode()).hexdigest()[:12]
    return f"sweep-summary-{digest}"


def log_summary_run(sweep: Sweep, charts: dict[str, Any], mode: str) -> Path:
    """Log the summary table and the sweep charts as the group's ``sweep-summary`` run; its dir."""
    import wandb

    run = wandb.init(
        project=sweep.project,
        entity=sweep.entity,
        group=sweep.group,
        job_type=JOB_TYPE,
        name=f"{sweep.name}-summary",
        id=summary_run_id(sweep),
        resume="allow",
        mode=mode,
        dir=str(sweep.root),
        tags=[f"sweep={sweep.name}", JOB_TYPE],
        config={
            "sweep": sweep.name,
            "swept": sweep.swept,
            "multirun_dir": str(sweep.root.resolve()),
        },
        settings=wandb.Settings(silent=True),
    )
    run.log({TABLE_KEY: summary_table(sweep.frame), **charts})
    run.summary.update({"jobs": len(sweep.frame), **runs.counts(sweep.frame)})
    directory = Path(run.dir).parent
    run.finish()
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m involution.runs dashboard", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "dir", nargs="?", help="the multirun directory (default: the latest under ./multirun)"
    )
    parser.add_argument("--project", help="W&B project (default: the sweep's logger.wandb.project)")
    parser.add_argument(
        "--entity", help="W&B entity (default: the sweep's, else your default entity)"
    )
    parser.add_argument(
        "--mode",
        default="auto",
        choices=("auto", "online", "offline"),
        help="auto: online when logged in",
    )
    args = parser.parse_args(argv)
    try:
        root = Path(args.dir) if args.dir else runs.latest_multirun()
        if not root.is_dir():
            raise DashboardError(f"DIR={root}: no such multirun directory")
        table = read_table(root)
    except (DashboardError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    jobs = f"{len(table.frame)} jobs ({runs.count_line(table.frame)})"
    print(f"{table.name} sweep: {jobs}, swept {', '.join(table.swept)}")
    page = render_sweep(table)  # no account needed: PNG files and one HTML page
    print(f"charts: {page} (open it in a browser; the PNG files are in {page.with_suffix('')})")
    try:
        sweep = read_sweep(root, args.project, args.entity)
    except DashboardError as error:
        print(f"no W&B workspace: {error}")
        return 0
    mode = resolve_wandb_mode(args.mode)
    charts = sweep_charts(sweep)
    if mode == "disabled":  # WANDB_MODE=disabled: the definition only
        print(f"W&B is disabled (WANDB_MODE): writing {root / DEFINITION} only", file=sys.stderr)
        run_dir = None
    else:
        run_dir = log_summary_run(sweep, charts, mode)
    entity = sweep.entity
    if mode == "online" and not entity:
        import wandb

        entity = wandb.Api().default_entity
    workspace = build_workspace(sweep, charts, entity)
    path = root / DEFINITION
    path.write_text(json.dumps(definition(workspace), indent=2) + "\n")
    print(f"W&B group {sweep.group}; workspace definition: {path}")
    if mode == "disabled":
        return 0
    if mode == "online":
        workspace.save()
        (root / URL_FILE).write_text(workspace.url + "\n")
        print(f"dashboard: {workspace.url}")
        return 0
    print(
        "W&B is offline: the jobs' runs and the summary run are on disk. "
        "When logged in (wandb login):\n"
        f"  wandb sync {root}/*/wandb/offline-run-* {run_dir}\n"
        f"  make dashboard DIR={root}\n"
        "(the second command saves the workspace and prints its URL)"
    )
    return 0
