"""A sweep's charts without a W&B account: PNG files and one self-contained HTML page in the
multirun directory (``make dashboard`` writes them in every mode, online or not).

- the best of each charted metric (the one the sweep is judged by: val top-1, box AP, mIoU; a
  Mask R-CNN sweep's mask AP too) against each swept key, one line per value of the other swept
  keys (bars for a key whose values are names, such as ``operator``);
- the same against multiply-adds per image, one line per operator;
- the validation curve of the judged metric grouped by each swept key (mean, min-max band) and
  each job's training loss, from the jobs' ``csv/metrics.csv``;
- the summary table (``involution.runs.summary``).

``<dir>/dashboard/*.png`` and ``<dir>/dashboard.html`` (the PNGs embedded: the page can be
mailed or opened anywhere).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING

from involution.runs.charts import (
    SweepTable,
    finite,
    key_leaf,
    operator_names,
    plain,
    series,
)
from involution.runs.summary import count_line, csv_rows, fmt, metric_headers, swept_cell

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PAGE = "dashboard.html"
FIGURES = "dashboard"
SIZE = (6.4, 4.0)


def _figure() -> tuple[Figure, object]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, layout="constrained")
    return figure, figure.add_subplot()


def _save(figure: Figure, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    figure.savefig(path, dpi=110)
    return path


def _percent_axis(axes: object, label: str) -> None:
    axes.set_ylabel(f"{label} (%)")
    axes.grid(True, alpha=0.3)


def _epoch_axis(axes: object) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def against_key(table: SweepTable, key: str, column: str, shown: str) -> Figure | None:
    """Best ``column`` (in %) against the swept ``key``: one line per value of the other swept
    keys, or grouped bars when ``key``'s values are names; None when no job finished."""
    import pandas as pd

    frame = table.frame
    others = [k for k in table.swept if k != key]
    figure, axes = _figure()
    if pd.api.types.is_numeric_dtype(frame[key]):
        xs, ys, labels = series(frame, key, others, column)
        for x, y, name in zip(xs, ys, labels):
            axes.plot(x, [100 * v for v in y], marker="o", label=name)
        axes.set_xticks(sorted({v for x in xs for v in x}))
    else:
        done = frame[(frame["status"] == "ok") & frame[column].map(finite)]
        values = sorted(dict.fromkeys(str(v) for v in done[key]))
        groups = done.groupby(others, sort=True, dropna=False) if others else [((), done)]
        groups = list(groups)
        width = 0.8 / max(len(groups), 1)
        for index, (group, part) in enumerate(groups):
            group = group if isinstance(group, tuple) else (group,)
            heights = [100 * float(part[part[key].astype(str) == v][column].mean()) for v in values]
            offsets = [i + (index - (len(groups) - 1) / 2) * width for i in range(len(values))]
            name = ", ".join(f"{key_leaf(k)}={plain(v)}" for k, v in zip(others, group))
            axes.bar(offsets, heights, width=width, label=name or None)
        axes.set_xticks(range(len(values)), values)
        xs = [values]
    if not any(xs):
        return None
    axes.set_xlabel(key)
    _percent_axis(axes, shown)
    by = " x ".join(key_leaf(k) for k in others)
    axes.set_title(f"{shown} vs {key_leaf(key)}" + (f" (one line per {by})" if by else ""))
    if others:
        axes.legend(fontsize="small")
    return figure


def against_macs(table: SweepTable, column: str, shown: str) -> Figure | None:
    """Best ``column`` (in %) against multiply-adds per image, one line per operator."""
    frame = table.frame.assign(operator=operator_names(table.frame))
    frame = frame[frame["macs"].map(finite)]
    xs, ys, labels = series(frame, "macs", ["operator"], column)
    if not any(xs):
        return None
    figure, axes = _figure()
    for x, y, name in zip(xs, ys, labels):
        axes.plot([v / 1e6 for v in x], [100 * v for v in y], marker="o", label=name)
    axes.set_xlabel("multiply-adds per image (M)")
    _percent_axis(axes, shown)
    axes.set_title(f"{shown} vs multiply-adds (one line per operator)")
    axes.legend(fontsize="small")
    return figure


def _curve(run_dir: str, metric: str) -> dict[int, float]:
    """epoch -> value of ``metric`` in a job's metrics.csv (the last row of each epoch)."""
    out: dict[int, float] = {}
    for row in csv_rows(Path(run_dir)):
        try:
            epoch, value = int(float(row.get("epoch", ""))), float(row.get(metric, ""))
        except ValueError:
            continue
        if math.isfinite(value):
            out[epoch] = value
    return out


def curves_by_key(table: SweepTable, key: str, metric: str, shown: str) -> Figure | None:
    """The validation ``metric`` per epoch, one line per value of ``key``: the mean over the jobs
    with that value, and their min-max band."""
    figure, axes = _figure()
    drawn = False
    for value, part in table.frame.groupby(key, sort=True, dropna=False):
        curves = [c for c in (_curve(d, metric) for d in part["run_dir"]) if c]
        epochs = sorted({e for c in curves for e in c})
        if not epochs:
            continue
        at = [[100 * c[e] for c in curves if e in c] for e in epochs]
        mean = [sum(v) / len(v) for v in at]
        line = axes.plot(epochs, mean, marker=".", label=f"{key_leaf(key)}={plain(value)}")[0]
        axes.fill_between(
            epochs, [min(v) for v in at], [max(v) for v in at], color=line.get_color(), alpha=0.15
        )
        drawn = True
    if not drawn:
        return None
    _epoch_axis(axes)
    _percent_axis(axes, shown)
    axes.set_title(f"{shown} per epoch by {key_leaf(key)} (mean, min-max)")
    axes.legend(fontsize="small")
    return figure


def training_loss(table: SweepTable) -> Figure | None:
    """Each job's training loss per epoch."""
    figure, axes = _figure()
    drawn = False
    for job, run_dir in zip(table.frame["job"], table.frame["run_dir"]):
        curve = _curve(run_dir, "train/loss_epoch")
        if curve:
            axes.plot(list(curve), list(curve.values()), marker=".", label=f"job {job}")
            drawn = True
    if not drawn:
        return None
    _epoch_axis(axes)
    axes.set_ylabel("training loss")
    axes.grid(True, alpha=0.3)
    axes.set_title("training loss per epoch (per job)")
    if len(table.frame) <= 16:
        axes.legend(fontsize="x-small", ncol=2)
    return figure


def figures(table: SweepTable) -> dict[str, Figure]:
    """Every chart of the sweep by file name (charts without a finished job are left out)."""
    out: dict[str, Figure | None] = {}
    primary = table.primary
    for metric in table.charted():
        column, shown = f"best_val_{metric.column}", f"best val {metric.label}"
        for key in table.swept:
            out[f"{column}_vs_{key_leaf(key)}"] = against_key(table, key, column, shown)
        out[f"{column}_vs_macs"] = against_macs(table, column, shown)
    for key in table.swept:
        out[f"val_{primary.column}_by_{key_leaf(key)}"] = curves_by_key(
            table, key, f"val/{primary.key}", f"val {primary.label}"
        )
    out["training_loss"] = training_loss(table)
    return {name: figure for name, figure in out.items() if figure is not None}


def table_html(table: SweepTable) -> str:
    """The summary table as HTML: the swept keys, status, the task's metrics in %, cost, error."""
    frame = table.frame
    metrics = metric_headers(frame)
    head = ["job", *table.swept, "status", *(h for _, h in metrics), "params (M)", "MACs (M)",
            "time (s)", "error"]  # fmt: skip

    rows = []
    for row in frame.to_dict("records"):
        cells = [
            str(row["job"]), *(swept_cell(row[k]) for k in table.swept), row["status"],
            *(fmt(row[c], 100) for c, _ in metrics), fmt(row["params"], 1e-6, 3),
            fmt(row["macs"], 1e-6, 1), fmt(row["wall_time_s"], 1, 0), row["error"],
        ]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    return f"<table>{header}{''.join(rows)}</table>"


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
.charts figure { margin: 0; }
.charts img { width: 560px; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; margin-top: 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
"""


def render_sweep(table: SweepTable) -> Path:
    """Write the sweep's charts (``<dir>/dashboard/*.png``) and the page that shows them with the
    summary table (``<dir>/dashboard.html``, images embedded); returns the page's path."""
    folder = table.root / FIGURES
    paths = {}
    for name, figure in figures(table).items():
        paths[name] = _save(figure, folder, name)
    images = []
    for name, path in paths.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        images.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>"
        )
    task = table.task
    title = f"{table.name} sweep: {table.root}"
    body = (
        f"<h1>{html.escape(table.name)} sweep</h1>"
        f"<p>{html.escape(str(table.root))}<br>{len(table.frame)} jobs: "
        f"{html.escape(count_line(table.frame))}; swept {html.escape(', '.join(table.swept))}; "
        f"{task.name}, judged by {html.escape(table.metric)}</p>"
        f"<div class='charts'>{''.join(images) or '<p>no finished job to chart yet</p>'}</div>"
        f"<h2>Summary</h2>{table_html(table)}"
    )
    page = table.root / PAGE
    page.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
    return page
