"""Figures for the notebooks. Each function returns a ``matplotlib.figure.Figure`` drawn on the
Agg canvas (no pyplot, no global state, works headless); ``show`` saves it as PNG and displays
it."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from involution.analysis.errors import AnalysisError
from involution.analysis.kernels import LayerKernels, kernel_variation
from involution.analysis.sweep import with_config_keys

PathLike = str | os.PathLike


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (4.0, 3.2), **kwargs: Any):
    """A Figure on the Agg canvas and its axes grid (``squeeze=False``: always 2-D)."""
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def save_figure(fig: Figure, figdir: PathLike, name: str, dpi: int = 110) -> Path:
    """Write ``<figdir>/<name>.png`` (directories created) and return its path."""
    path = Path(figdir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def show(fig: Figure, figdir: PathLike, name: str) -> None:
    """Save the figure as ``<figdir>/<name>.png`` and, inside IPython/Jupyter, display that PNG
    (returns None, so a notebook cell ending with it prints nothing else)."""
    path = save_figure(fig, figdir, name)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # pragma: no cover - IPython is a dev dependency
        return
    if get_ipython() is not None:
        display(Image(filename=str(path)))


def _image_plane(image: torch.Tensor) -> np.ndarray:
    plane = image.detach().float().cpu()
    if plane.dim() == 3:
        plane = plane.mean(dim=0) if plane.shape[0] != 3 else plane.permute(1, 2, 0)
    array = plane.numpy()
    lo, hi = float(array.min()), float(array.max())
    return (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)


# --------------------------------------------------------------------------------------------
# sweeps


def _present(value: Any) -> bool:
    return (
        value is not None and not (isinstance(value, float) and math.isnan(value)) and value != ""
    )


def _level(value: Any) -> str:
    """4.0 -> '4' (a column with gaps turns ints into floats)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _ok(table: pd.DataFrame, value: str) -> pd.DataFrame:
    ok = table[table[value].notna()]
    if ok.empty:
        raise AnalysisError(
            f"no job of the sweep has a {value} (all failed?): see the status/error columns"
        )
    return ok


def plot_accuracy_vs_kernel(
    table: pd.DataFrame,
    x: str = "operator.kernel_size",
    hue: str = "operator.reduction_ratio",
    value: str = "best_val_top1",
) -> Figure:
    """``value`` against ``x`` with one line per ``hue`` (the paper's Table 6a layout)."""
    table = _ok(with_config_keys(table, [x, hue, "operator"]), value)
    table = table[table[x].notna()]
    # Jobs without the hue key (e.g. convolution jobs of an operator sweep: no reduction ratio) get
    # one line per operator instead.
    labels = [
        f"{hue.split('.')[-1]}={_level(level)}" if _present(level) else str(operator)
        for level, operator in zip(table[hue], table["operator"])
    ]
    fig, axes = new_figure(size=(5.0, 3.6))
    ax = axes[0, 0]
    for label, group in table.groupby(pd.Series(labels, index=table.index), sort=True):
        points = group.groupby(x)[value].mean().sort_index()
        ax.plot(points.index, points.values * 100, marker="o", label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{value} (%)")
    ax.set_title(f"{value} vs {x.split('.')[-1]}")
    values = sorted(pd.to_numeric(table[x], errors="coerce").dropna().unique())
    if values:
        ax.set_xticks(values)
    ax.grid(alpha=0.3)
    ax.legend(title=hue)
    return fig


def plot_accuracy_vs_cost(
    table: pd.DataFrame, value: str = "best_val_top1", by: str = "operator"
) -> Figure:
    """``value`` against MACs and against params, one colour per ``by`` (default the operator)."""
    table = _ok(with_config_keys(table, [by]), value)
    fig, axes = new_figure(1, 2, size=(4.6, 3.6))
    for ax, cost, unit, scale in (
        (axes[0, 0], "macs", "MMACs", 1e6),
        (axes[0, 1], "params", "M params", 1e6),
    ):
        for level, group in table.groupby(table[by].astype(str), sort=True):
            ax.scatter(group[cost] / scale, group[value] * 100, label=str(level), s=36)
            for _, row in group.iterrows():
                ax.annotate(
                    str(row["job"]),
                    (row[cost] / scale, row[value] * 100),
                    fontsize=7,
                    alpha=0.7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        costs = table[cost].dropna()
        if len(costs) and costs.min() > 0 and costs.max() / costs.min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel(unit)
        ax.set_ylabel(f"{value} (%)")
        ax.set_title(f"{value} vs {cost}")
        ax.grid(alpha=0.3)
        ax.legend(title=by, fontsize=8)
    return fig


def plot_training_curves(curves: dict[str, pd.DataFrame]) -> Figure:
    """Training loss per step and validation top-1 per epoch, one line per job."""
    if not curves:
        raise AnalysisError("no jobs to plot training curves for")
    fig, axes = new_figure(1, 2, size=(4.6, 3.4))
    loss_ax, acc_ax = axes[0, 0], axes[0, 1]
    for job, metrics in curves.items():
        loss_key = next(
            (k for k in ("train/loss_step", "train/loss", "train/loss_epoch") if k in metrics), None
        )
        if loss_key is not None and "step" in metrics:
            loss = metrics[["step", loss_key]].dropna()
            loss_ax.plot(
                loss["step"], loss[loss_key], label=job, marker="." if len(loss) < 20 else None
            )
        if "val/acc_top1" in metrics:
            x_key = "epoch" if "epoch" in metrics else "step"
            acc = metrics[[x_key, "val/acc_top1"]].dropna()
            acc_ax.plot(acc[x_key], acc["val/acc_top1"] * 100, label=job, marker="o")
    loss_ax.set(xlabel="step", ylabel="training loss", title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="validation top-1")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(title="job", fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------
# kernels


def plot_kernel_overlays(
    image: torch.Tensor,
    captures: dict[str, LayerKernels],
    pixels: Sequence[tuple[int, int]],
    sample: int = 0,
    max_groups: int = 4,
    alpha: float = 0.6,
) -> Figure:
    """Rows: layers; columns: (pixel, group). Each panel: the image, the KxK kernel generated at
    the pixel drawn over the window it weighs (red positive, blue negative), the pixel marked."""
    if not captures or not pixels:
        raise AnalysisError("nothing to draw: no captured layers or no pixels")
    plane = _image_plane(image)
    h, w = plane.shape[:2]
    shown = {name: min(layer.groups, max_groups) for name, layer in captures.items()}
    cols = len(pixels) * max(shown.values())
    fig, axes = new_figure(len(captures), cols, size=(2.1, 2.2))
    for r, (name, layer) in enumerate(captures.items()):
        for p, pixel in enumerate(pixels):
            for g in range(max(shown.values())):
                ax = axes[r, p * max(shown.values()) + g]
                ax.set_axis_off()
                if g >= shown[name]:
                    continue
                kernel = layer.at(pixel, sample, g).numpy()
                bound = float(np.abs(kernel).max()) or 1.0
                ax.imshow(plane, cmap="gray", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
                ax.imshow(
                    kernel,
                    cmap="coolwarm",
                    vmin=-bound,
                    vmax=bound,
                    alpha=alpha,
                    extent=layer.window_extent(pixel),
                    interpolation="nearest",
                )
                ax.plot(pixel[1], pixel[0], marker="+", color="yellow", markersize=9, mew=2)
                ax.set_xlim(-0.5, w - 0.5)
                ax.set_ylim(h - 0.5, -0.5)
                ax.set_title(f"{name}\ng{g} @ {tuple(pixel)}", fontsize=7)
    fig.suptitle("generated involution kernels at chosen pixels (per layer and group)", fontsize=10)
    return fig


def plot_variation_maps(
    image: torch.Tensor, captures: dict[str, LayerKernels], sample: int = 0
) -> Figure:
    """The image and, per layer, how far each pixel's kernel is from the layer's mean kernel
    (relative): involution kernels are spatial-specific, so these maps follow the content."""
    if not captures:
        raise AnalysisError("nothing to draw: no captured layers")
    plane = _image_plane(image)
    h, w = plane.shape[:2]
    fig, axes = new_figure(1, len(captures) + 1, size=(2.6, 2.7))
    axes[0, 0].imshow(plane, cmap="gray")
    axes[0, 0].set_title("image", fontsize=8)
    axes[0, 0].set_axis_off()
    for ax, (name, layer) in zip(axes[0, 1:], captures.items()):
        variation = kernel_variation(layer.kernel)
        ax.imshow(plane, cmap="gray", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        im = ax.imshow(
            variation.spatial_map[sample].numpy(),
            cmap="magma",
            alpha=0.75,
            extent=(-0.5, w - 0.5, h - 0.5, -0.5),
            interpolation="nearest",
        )
        fig.colorbar(im, ax=ax, shrink=0.7)
        ax.set_title(
            f"{name} ({layer.output_size[0]}x{layer.output_size[1]})\n"
            f"across space {variation.across_space:.2f}, groups {variation.across_groups:.2f}",
            fontsize=7,
        )
        ax.set_axis_off()
    fig.suptitle(
        "kernel variation across space (distance from the layer's mean kernel)", fontsize=10
    )
    return fig


def plot_conv_filters(filters: dict[str, torch.Tensor], max_filters: int = 8) -> Figure:
    """Rows: layers; columns: the first output channels. Each panel: the KxK filter of the input
    channel with the largest weight norm (the same filter is applied at every pixel)."""
    if not filters:
        raise AnalysisError("nothing to draw: no convolution filters")
    cols = min(max_filters, max(w.shape[0] for w in filters.values()))
    fig, axes = new_figure(len(filters), cols, size=(1.5, 1.6))
    for r, (name, weight) in enumerate(filters.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= weight.shape[0]:
                continue
            strongest = int(weight[c].flatten(1).norm(dim=1).argmax())
            kernel = weight[c, strongest].numpy()
            bound = float(np.abs(kernel).max()) or 1.0
            ax.imshow(kernel, cmap="coolwarm", vmin=-bound, vmax=bound, interpolation="nearest")
            ax.set_title(f"{name}\nout {c} in {strongest}", fontsize=6)
    fig.suptitle(
        "learned convolution filters (shared by every pixel, one per channel pair)", fontsize=10
    )
    return fig


# --------------------------------------------------------------------------------------------
# costs


def plot_costs(table: pd.DataFrame) -> Figure:
    """Params (M) and MACs (G) against depth, one line per family/operator."""
    fig, axes = new_figure(1, 2, size=(4.6, 3.5))
    for ax, column, label in (
        (axes[0, 0], "params_m", "params (M)"),
        (axes[0, 1], "macs_g", "MACs (G)"),
    ):
        for (family, operator), group in table.groupby(["family", "operator"], sort=False):
            group = group.sort_values("depth")
            ax.plot(group["depth"], group[column], marker="o", label=f"{family} ({operator})")
        ax.set(xlabel="depth", ylabel=label, title=f"{label} per depth")
        ax.set_xticks(sorted(table["depth"].unique()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_spatial_op_costs(
    table: pd.DataFrame, channels: int | None = None, size: int | None = None
) -> Figure:
    """Bars: params and MACs of one spatial operator of each kind."""
    table = table[table["params"].notna()]
    if table.empty:
        raise AnalysisError("no operator could be counted (see the note column)")
    fig, axes = new_figure(1, 2, size=(4.6, 3.5))
    where = f" (C={channels}, {size}x{size})" if channels and size else ""
    for ax, column, scale, label in (
        (axes[0, 0], "params", 1e3, "params (K)"),
        (axes[0, 1], "macs", 1e6, "MMACs"),
    ):
        ax.barh(table["operator"], table[column] / scale, color="tab:blue")
        ax.set(xlabel=label, title=f"{label} of one spatial op{where}")
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    return fig


def plot_benchmarks(table: pd.DataFrame) -> Figure:
    """Grouped bars: forward+backward median per shape (groups) and backend (bars), log scale."""
    if table.empty:
        raise AnalysisError("no benchmark rows to plot")
    tables = list(dict.fromkeys(table["table"]))
    fig, axes = new_figure(len(tables), 1, size=(7.5, 3.4))
    for ax, name in zip(axes[:, 0], tables):
        part = table[table["table"] == name]
        shapes = list(dict.fromkeys(part["shape"].astype(str)))
        backends = list(dict.fromkeys(part["backend"].astype(str)))
        width = 0.8 / max(1, len(backends))
        for b, backend in enumerate(backends):
            values = [
                part[(part["shape"].astype(str) == s) & (part["backend"].astype(str) == backend)][
                    "median_ms"
                ].mean()
                for s in shapes
            ]
            positions = [i + (b - (len(backends) - 1) / 2) * width for i in range(len(shapes))]
            kept = [(x, v) for x, v in zip(positions, values) if not math.isnan(v) and v > 0]
            ax.bar([x for x, _ in kept], [v for _, v in kept], width, label=backend)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=20, ha="right", fontsize=7)
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set(ylabel="median (ms)", title=f"forward+backward: {name}")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, ncols=min(4, len(backends)))
    return fig
