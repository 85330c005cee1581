"""What a run shows: the composed config as a rich tree, a model summary that names the spatial
operator of every stage, the run's header once it is built and its closing lines, whatever the
outcome (the lifecycle, ``involution.runner.lifecycle``, calls the last two and nothing else does).

The first two follow lightning-hydra-template's habits: the tree is printed by rank zero and saved
next to Hydra's ``.hydra/config.yaml`` as ``config_tree.log`` (the same text, readable without
YAML tooling); the summary is Lightning's :class:`~lightning.pytorch.callbacks.RichModelSummary`
(selected in ``conf/callbacks/default.yaml``) with the type of each stage spelled out.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary import ModelSummary
from omegaconf import DictConfig, OmegaConf
from torch import nn

if TYPE_CHECKING:
    from involution.runner.build import Run
    from involution.runner.outcome import Outcome

log = logging.getLogger(__name__)

CONFIG_TREE = "config_tree.log"
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


@rank_zero_only
def print_config_tree(
    cfg: DictConfig, save_dir: str | Path | None = None, resolve: bool = True
) -> Path | None:
    """Print the config tree (without the ``hydra`` node) and write it to
    ``save_dir/config_tree.log``."""
    import rich
    from rich.console import Console

    body = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    tree = config_tree(body, resolve=resolve)
    rich.print(tree)
    if save_dir is None:
        return None
    path = Path(save_dir) / CONFIG_TREE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:  # plain text, long paths unwrapped
        Console(file=handle, width=240, color_system=None, soft_wrap=True).print(tree)
    return path


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


class _OperatorSummary(ModelSummary):
    """Lightning's summary with each stage's Type naming its blocks and spatial operator."""

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


class OperatorModelSummary(RichModelSummary):
    """RichModelSummary whose stage rows read e.g. ``2 x Bottleneck: Involution2d(64, kernel_size=7,
    stride=1, groups=4, ...)``; ``max_depth=2`` lists the stem, the four stages and the head."""

    def __init__(self, max_depth: int = 2, **summarize_kwargs) -> None:
        super().__init__(max_depth=max_depth, **summarize_kwargs)

    def _summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ModelSummary:
        return _OperatorSummary(pl_module, max_depth=self._max_depth)


def header(run: Run) -> None:
    """What a run says once it is built, before its first step."""
    params, macs = run.info["params"], run.info["macs"]
    log.info("model: %.2f M params, %.3f G multiply-adds per image", params / 1e6, macs / 1e9)
    if run.resume is not None:
        log.info("resuming from %s", run.resume.path)


def closing(cfg: DictConfig, outcome: Outcome, run: Run | None, job: int | None) -> None:
    """What a run says at its end, for every outcome (``run``: None when it was not built;
    ``job``: a multirun job's number).

    ok: the optimized metric; a multirun job that did not finish: one logged line (the sweep goes
    on); a single run: ``error: <line>`` (bad input, divergence) or the ``preempted: ...`` line on
    stderr; an unexpected error's report is its traceback.
    """
    if outcome.status == "ok":
        if outcome.value is not None:
            log.info("%s = %s", cfg.optimized_metric, outcome.value)
    elif outcome.status == "preempted":
        print(outcome.message, file=sys.stderr, flush=True)
    elif job is not None and outcome.sweep_goes_on:
        error = outcome.recorded if outcome.exit_code == 1 else None
        log.error("job %s %s: %s", job, outcome.status, outcome.message, exc_info=error)
    elif outcome.exit_code != 1:
        print(f"error: {outcome.message}", file=sys.stderr, flush=True)
