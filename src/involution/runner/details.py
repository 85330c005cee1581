"""What a run writes to its directory and prints only when asked (``verbose=true``; the tree
alone with ``print_config=true``):

- the composed config as a rich tree, ``config_tree.log`` (next to Hydra's
  ``.hydra/config.yaml``, the same text readable without YAML tooling; under evaluation with the
  architecture really evaluated);
- the model summary, ``model_summary.log``: Lightning's rich summary whose stage rows name their
  blocks and spatial operator and whose MACs column is our count (the FLOP counter that sees the
  involution op), in place of Lightning's FLOPs column, which reads 0 without an example input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary import ModelSummary
from omegaconf import DictConfig, OmegaConf
from torch import nn

if TYPE_CHECKING:
    from involution.runner.build import Run

CONFIG_TREE = "config_tree.log"
MODEL_SUMMARY = "model_summary.log"
# The groups people look at first; the others follow in the config's own order.
PRINT_ORDER = ("data", "model", "operator", "module", "trainer", "callbacks", "logger", "paths")


def config_tree(cfg: DictConfig, order: Sequence[str] = PRINT_ORDER, resolve: bool = True):
    """A ``rich.tree.Tree``: one branch per top-level key, its YAML (resolved) beneath it."""
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("CONFIG", style="dim", guide_style="dim")
    keys = [key for key in order if key in cfg] + [key for key in cfg if key not in order]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        value = cfg[key]
        if isinstance(value, DictConfig):
            text = OmegaConf.to_yaml(value, resolve=resolve)
        else:
            text = str(value)
        branch.add(
            Syntax(text.rstrip() or "{}", "yaml", theme="ansi_dark", background_color="default")
        )
    return tree


def _write_rich(renderable: Any, path: Path) -> Path:
    """Plain text, long paths unwrapped."""
    from rich.console import Console

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        Console(file=handle, width=240, color_system=None, soft_wrap=True).print(renderable)
    return path


@rank_zero_only
def print_config_tree(
    cfg: DictConfig, save_dir: str | Path | None = None, resolve: bool = True, printed: bool = True
) -> Path | None:
    """Write the config tree (without the ``hydra`` node) to ``save_dir/config_tree.log`` and
    print it when ``printed``."""
    import rich

    body = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    tree = config_tree(body, resolve=resolve)
    if printed:
        rich.print(tree)
    return None if save_dir is None else _write_rich(tree, Path(save_dir) / CONFIG_TREE)


def built_model(run: Run) -> dict[str, Any]:
    """The model arguments the task's module was really built with (a checkpoint's under
    evaluation), from its hyperparameters; {} when it keeps none."""
    hparams = getattr(run.module, "hparams", {})
    model = hparams.get("model") if isinstance(hparams, Mapping) else None
    return dict(model) if isinstance(model, Mapping) and "name" in model else {}


def evaluated_config(cfg: DictConfig, run: Run) -> DictConfig:
    """The config with the ``model`` and ``operator`` an evaluation really built (a Lightning
    checkpoint brings its own architecture, whatever the groups say)."""
    arguments = built_model(run)
    if "checkpoint" not in run.info or not arguments:
        return cfg
    body = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    model = {k: v for k, v in arguments.items() if k != "operator"}
    body.model = OmegaConf.create(model)
    if isinstance(arguments.get("operator"), Mapping):
        body.operator = OmegaConf.create(dict(arguments["operator"]))
    return body


# ---------------------------------------------------------------------------------------------
# The model summary

_STAGE = re.compile(r"(^|\.)layer\d+$")


def spatial_operator(module: nn.Module) -> str:
    """``Involution2d(64, kernel_size=7, ...)``: the class and settings of a layer, in one line."""
    return f"{type(module).__name__}({module.extra_repr()})"


def describe_stage(module: nn.Module) -> str | None:
    """``"2 x Bottleneck: Involution2d(...)"`` for a stage of bottleneck blocks, else None."""
    blocks = list(module.children()) if isinstance(module, nn.Sequential) else []
    if not blocks or not all(isinstance(getattr(b, "conv2", None), nn.Module) for b in blocks):
        return None
    operators = dict.fromkeys(type(b.conv2).__name__ for b in blocks)
    first = spatial_operator(blocks[0].conv2)
    if len(operators) > 1:
        first += " + " + ", ".join(list(operators)[1:])
    return f"{len(blocks)} x {type(blocks[0]).__name__}: {first}"


def _human(count: int | None) -> str:
    if count is None:
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return str(count)


class _OperatorSummary(ModelSummary):
    """Lightning's summary with each stage's Type naming its blocks and spatial operator, and a
    MACs column of our count (``macs``: multiply-adds by module name of the LightningModule)
    instead of the FLOPs column (0 without an example input); no MACs column when ``macs`` is
    None."""

    def __init__(self, model: L.LightningModule, max_depth: int, macs: dict[str, int] | None):
        self.macs = macs
        super().__init__(model, max_depth=max_depth)

    @property
    def layer_types(self) -> list[str]:
        modules = dict(self._model.named_modules())
        types = []
        for name, layer in self._layer_summary.items():
            text = (
                describe_stage(modules[name]) if _STAGE.search(name) and name in modules else None
            )
            types.append(text or layer.layer_type)
        return types

    def _get_summary_data(self) -> list[tuple[str, list[str]]]:
        data = [(name, values) for name, values in super()._get_summary_data() if name != "FLOPs"]
        if self.macs is not None:
            names = dict(data)["Name"]
            data.append(("MACs", [_human(self.macs.get(name)) for name in names]))
        return data


def module_macs(pl_module: L.LightningModule, input_size: Sequence[int]) -> dict[str, int] | None:
    """Multiply-adds per submodule of ``pl_module.model`` (named as in the LightningModule:
    ``model.layer1``) for one input of ``input_size``; None when the model cannot be counted."""
    from involution.models.counting import macs_by_module

    model = getattr(pl_module, "model", None)
    if not isinstance(model, nn.Module):
        return None
    try:
        counts = macs_by_module(model, input_size, depth=2)
    except Exception:  # a model the counter cannot run on a blank input: no column, no guess
        return None
    return {("model." + name).rstrip("."): count for name, count in counts.items()}


def summary_table(summary: _OperatorSummary, total_macs: int | None):
    """Lightning's rich summary (the rows and the totals) as one renderable."""
    from lightning.pytorch.utilities.model_summary.model_summary import (
        get_formatted_model_size,
        get_human_readable_count,
    )
    from rich.console import Group
    from rich.table import Table

    data = summary._get_summary_data()
    table = Table(header_style="bold magenta")
    for name, _ in data:
        table.add_column(name, justify="right" if name in ("Params", "MACs") else "left")
    for row in zip(*(values for _, values in data)):
        table.add_row(*row)
    totals = Table.grid()
    totals.add_column()
    lines = {
        "Trainable params": get_human_readable_count(summary.trainable_parameters),
        "Total params": get_human_readable_count(summary.total_parameters),
        "Total estimated model params size (MB)": get_formatted_model_size(summary.model_size),
    }
    if total_macs is not None:
        lines["Multiply-adds per image"] = _human(total_macs)
    for label, value in lines.items():
        totals.add_row(f"[bold]{label}[/]: {value}")
    return Group(table, totals)


class OperatorModelSummary(RichModelSummary):
    """Lightning's model summary whose stage rows read e.g. ``2 x Bottleneck: Involution2d(64,
    kernel_size=7, stride=1, groups=4, ...)`` and whose MACs column is our count;
    ``max_depth=2`` lists the stem, the four stages and the head. Written to
    ``save_dir/model_summary.log``; printed only when ``printed``."""

    def __init__(
        self,
        max_depth: int = 2,
        save_dir: str | None = None,
        printed: bool = True,
        **summarize_kwargs: Any,
    ) -> None:
        super().__init__(max_depth=max_depth, **summarize_kwargs)
        self.save_dir, self.printed = save_dir, printed

    def _summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ModelSummary:
        return _OperatorSummary(pl_module, self._max_depth, None)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._max_depth or not trainer.is_global_zero:
            return
        data = trainer.datamodule
        size = [getattr(data, "in_channels", None), getattr(data, "image_size", None)]
        macs = module_macs(pl_module, (size[0], size[1], size[1])) if all(size) else None
        summary = _OperatorSummary(pl_module, self._max_depth, macs)
        renderable = summary_table(summary, (macs or {}).get("model"))
        if self.printed:
            from rich import get_console

            get_console().print(renderable)
        if self.save_dir:
            _write_rich(renderable, Path(self.save_dir) / MODEL_SUMMARY)
