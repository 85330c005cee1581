"""What a run shows a person: a short header once it is built (what runs, its size and cost,
where it goes), the progress bars, and a closing summary whatever the outcome (the lifecycle,
``involution.runner.lifecycle``, calls :func:`header` and :func:`closing` and nothing else does).
A sweep's job shows one line as it ends; the sweep's table follows at the end
(``involution.runs.callback``). Both are task-aware: the metrics shown are the headline metrics
of the task the run's ``optimized_metric`` belongs to (``involution.runs.metrics``).

The rest is written to the run directory (``involution.runner.details``: the config tree, the
model summary) or to the run's log, ``train.log`` (``eval.log``), which keeps every record: the
header and the closing summary, Lightning's notices (accelerator, restored checkpoints, tips),
warnings and errors with their tracebacks. ``conf/hydra/default.yaml`` routes the records:
:class:`ConsoleFormatter` and :class:`ConsoleFilter` on the console, everything in the file.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from involution.runner.details import built_model, evaluated_config, print_config_tree
from involution.runs.metrics import Task, judged_first, percent, task_of
from involution.runs.summary import best_epoch

if TYPE_CHECKING:
    from involution.runner.build import Run
    from involution.runner.outcome import Outcome

log = logging.getLogger(__name__)

# Lightning's own loggers: their notices go to the run's log (and the console when verbose).
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
# ``extra=FILE_ONLY``: a record for the run's log, not the console.
FILE_ONLY = {"console": False}


# ---------------------------------------------------------------------------------------------
# Log records: the console shows ours plainly, the file keeps everything


class ConsoleFormatter(logging.Formatter):
    """Our INFO lines as they are; warnings and errors as ``warning: <first line>`` (an error's
    traceback, when it carries one, below it)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno < logging.WARNING:
            return message
        first = message.strip().splitlines()[0] if message.strip() else ""
        text = f"{record.levelname.lower()}: {getattr(record, 'short', first)}"
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ConsoleFilter(logging.Filter):
    """Keeps from the console what belongs to the run's log only: records logged with
    ``extra=FILE_ONLY``, and deprecation notices one installed library raises about another
    (``DeprecationWarning``/``FutureWarning`` from site-packages), which nobody running the
    project can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False:
            return False
        return not getattr(record, "library_deprecation", False)


class ConsoleHandler(logging.StreamHandler):
    """The console's handler: a line logged while a progress bar is drawn (a warning mid-epoch)
    goes above the bar, on a line of its own, the bar redrawn below it (``tqdm.write``)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # as logging.StreamHandler: a broken stream never stops the run
            self.handleError(record)


def log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` as a log record of ``py.warnings``: ``<Category>: <message>
    (<file>:<line>)`` in the run's log, one line on the console."""
    library = "site-packages" in filename or "dist-packages" in filename
    deprecation = issubclass(category, DeprecationWarning | FutureWarning)
    text = f"{category.__name__}: {str(message).strip()}"
    logging.getLogger("py.warnings").warning(
        "%s (%s:%s)",
        text,
        filename,
        lineno,
        extra={
            "library_deprecation": library and deprecation,
            "short": f"{text.splitlines()[0]} ({Path(filename).name}:{lineno})",
        },
    )


def route_logs(verbose: bool) -> None:
    """Python warnings into the log records (:func:`log_warning`: the run's log keeps them);
    Lightning's notices on the console too when ``verbose`` (``conf/hydra/default.yaml`` sends
    them to the file only)."""
    warnings.showwarning = log_warning
    root_console = [h for h in logging.getLogger().handlers if isinstance(h, ConsoleHandler)]
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in root_console:
            if verbose and handler not in logger.handlers:
                logger.addHandler(handler)
            if not verbose and handler in logger.handlers:
                logger.removeHandler(handler)


# ---------------------------------------------------------------------------------------------
# The header


def _choice(group: str) -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def _shown_path(path: str | Path) -> str:
    """A path relative to the working directory when it lies below it (what people type)."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def _settings(values: Mapping[str, Any], skip: Sequence[str] = (), most: int = 6) -> str:
    items = [
        f"{k}={v}"
        for k, v in values.items()
        if k not in skip and v is not None and not isinstance(v, Mapping | list | tuple)
    ]
    return ", ".join(items[:most]) + (", ..." if len(items) > most else "")


def _experiment_data(name: str, config_name: str = "train") -> str | None:
    """The data group an experiment selects (its ``override /data``), else the entry config's
    default; None when the file cannot be read."""
    conf = files("involution.conf")
    try:
        experiment = OmegaConf.to_container(
            OmegaConf.load(str(conf / "experiment" / f"{name}.yaml"))
        )
        entry = OmegaConf.to_container(OmegaConf.load(str(conf / f"{config_name}.yaml")))
    except (OSError, ValueError):
        return None
    for source, key in ((experiment, "override /data"), (entry, "data")):
        for item in (source or {}).get("defaults") or []:
            if isinstance(item, dict) and key in item:
                return str(item[key])
    return None


def recipe_note(experiment: str | None, data: str | None, config_name: str = "train") -> str | None:
    """One line when the data group is not the one the experiment's recipe was written for
    (``data=cifar10`` with the default ``experiment=digits``), naming the experiments written for
    it; None when they match or no experiment is active."""
    if not experiment or not data:
        return None
    made_for = _experiment_data(experiment, config_name)
    if made_for is None or made_for == data:
        return None
    folder = files("involution.conf") / "experiment"
    matching = sorted(
        path.name.removesuffix(".yaml")
        for path in folder.iterdir()
        if path.name.endswith(".yaml")
        and _experiment_data(path.name.removesuffix(".yaml"), config_name) == data
    )
    hint = (
        f"its own recipe: {' or '.join(f'experiment={m}' for m in matching)}"
        if matching
        else f"no experiment is written for data={data}; set the widths, schedule and lr yourself"
    )
    return (
        f"data={data} trains with the recipe of experiment={experiment} "
        f"(written for data={made_for}: its widths, epochs and lr); {hint}"
    )


def header_lines(run: Run) -> list[str]:
    """The header: what runs (model, operator, data, experiment or checkpoint), its size and cost,
    and where it goes."""
    cfg, info = run.cfg, run.info
    model = built_model(run) or OmegaConf.to_container(cfg.model, resolve=True)
    operator = model.get("operator") or OmegaConf.to_container(
        cfg.get("operator", {}), resolve=True
    )
    skip = ("name", "num_classes", "in_channels", "checkpoint", "operator")
    lines = []
    if "checkpoint" in info:
        kind = info.get("checkpoint_kind")
        origin = "its own architecture" if kind == "lightning" else "the model and operator groups"
        lines.append(f"evaluate  {_shown_path(info['checkpoint'])} ({origin}), split {cfg.split}")
    else:
        task = task_of(cfg.get("optimized_metric"))
        judged = cfg.get("optimized_metric") or f"val/{task.primary.key}"
        lines.append(
            f"train     experiment={_choice('experiment') or '-'}, task {task.name} "
            f"(checkpoints keep the best {judged})"
        )
    size = "x".join(str(s) for s in info.get("input_size", [])[1:])
    lines.append(
        f"model     {model.get('name')} ({_settings(model, skip)}): "
        f"{info.get('params', 0) / 1e6:.2f} M params, "
        f"{info.get('macs', 0) / 1e6:.1f} M multiply-adds per {size} image"
    )
    if isinstance(operator, Mapping) and operator.get("name"):
        shown = _settings(operator, ("name", "recompute_kernel"), most=8)
        lines.append(f"operator  {operator['name']} ({shown})")
    data = run.datamodule
    shape = f"{getattr(data, 'num_classes', '?')} classes, batch {getattr(data, 'batch_size', '?')}"
    lines.append(f"data      {_choice('data') or type(data).__name__}: {shape}")
    run_dir = _shown_path(cfg.paths.output_dir)
    lines.append(
        f"run dir   {run_dir} (config_tree.log, model_summary.log, {_log_name(cfg)}, job.json)"
    )
    if run.resume is not None:
        lines.append(f"resuming  from {_shown_path(run.resume.path)}")
    return lines


def _log_name(cfg: DictConfig) -> str:
    return f"{cfg.get('task_name', 'train')}.log"


@rank_zero_only
def header(run: Run) -> None:
    """What a run says once it is built, before its first step: the header (a sweep's job: to its
    log only, the launcher has named the job), a recipe that was not written for the data group,
    and the config tree in the run directory (printed with ``verbose`` or ``print_config``)."""
    cfg = run.cfg
    verbose = bool(cfg.get("verbose", False))
    print_config_tree(
        evaluated_config(cfg, run),
        save_dir=cfg.paths.output_dir,
        printed=verbose or bool(cfg.get("print_config", False)),
    )
    extra = FILE_ONLY if _job_number() is not None else None
    for line in header_lines(run):
        log.info(line, extra=extra)
    config_name = "eval" if "checkpoint" in run.info else "train"
    note = recipe_note(_choice("experiment"), _choice("data"), config_name)
    if note:
        log.warning(note)


def _job_number() -> int | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return OmegaConf.select(HydraConfig.get(), "job.num", default=None)


# ---------------------------------------------------------------------------------------------
# The closing summary


def _checkpoints(run_dir: Path, run: Run | None) -> tuple[Path | None, Path | None]:
    """The best and the last checkpoint of a run directory (the checkpoint callback's best when
    it has one)."""
    folder = run_dir / "checkpoints"
    best = None
    callback = run.trainer.checkpoint_callback if run is not None else None
    if callback is not None and getattr(callback, "best_model_path", ""):
        best = Path(callback.best_model_path)
    if best is None or not best.is_file():
        found = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
        best = found[-1] if found else None
    last = folder / "last.ckpt"
    return best, last if last.is_file() else None


def _value(metrics: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def metric_lines(
    task: Task, judged: str, metrics: Mapping[str, Any], run_dir: Path
) -> tuple[str | None, str | None]:
    """(best validation line, test line): the judged metric's best with its epoch and the task's
    other headline metrics at that epoch (from the run's metrics.csv), the test split's."""
    ordered = judged_first(task, judged)
    at_best = best_epoch(run_dir, judged)
    primary = ordered[0]
    best = _value(metrics, f"best/{judged}") or at_best.get(f"best_val_{primary.column}")
    best_line = None
    if best is not None:
        epoch = at_best.get("best_epoch")
        others = [
            f"{m.label} {percent(at_best[f'best_val_{m.column}'])}"
            for m in ordered[1:]
            if f"best_val_{m.column}" in at_best
        ]
        best_line = f"best {judged} {percent(best)}" + (
            f" at epoch {int(epoch)}" if epoch is not None else ""
        )
        best_line += f" ({', '.join(others)})" if others else ""
    tests = [
        f"{m.label} {percent(v)}"
        for m in ordered
        if (v := _value(metrics, f"test/{m.key}")) is not None
    ]
    return best_line, ", ".join(tests) if tests else None


def _wandb_line(cfg: DictConfig, wandb: Mapping[str, str] | None) -> str:
    if wandb is None:
        has_entry = OmegaConf.select(cfg, "logger.wandb", default=None) is not None
        return (
            "W&B       disabled"
            if has_entry
            else "W&B       not used (no wandb entry in the logger group)"
        )
    if wandb.get("mode") == "online":
        return f"W&B       {wandb.get('url')}"
    if wandb.get("mode") == "offline":
        return f"W&B       offline; to upload it: wandb sync {_shown_path(wandb['dir'])}"
    return f"W&B       {wandb.get('mode')}"


def _next_commands(cfg: DictConfig, outcome: Outcome, best: Path | None, run_dir: str) -> list[str]:
    if outcome.status == "ok" and best is not None:
        return [
            f"make eval CKPT={_shown_path(best)}",
            f"make notebooks CHECKPOINT={_shown_path(best)}   (its kernels, notebook 02)",
            f'make train ARGS="resume={run_dir} trainer.max_epochs=<more>"   (train on)',
        ]
    if outcome.status in ("preempted", "failed") and outcome.checkpoint:
        return [f'make train ARGS="resume={run_dir}"   (continue from its last checkpoint)']
    if outcome.status == "diverged":
        command = f'make train ARGS="resume={run_dir} module.lr=<lower>"'
        return [f"{command}   (from its last good checkpoint)"]
    return []


def closing_lines(
    cfg: DictConfig,
    outcome: Outcome,
    run: Run | None,
    wandb: Mapping[str, str] | None = None,
    elapsed: float | None = None,
) -> list[str]:
    """The closing summary of a run (see :func:`closing`), as lines."""
    run_dir = Path(cfg.paths.output_dir)
    shown_dir = _shown_path(run_dir)
    judged = cfg.get("optimized_metric") or "val/acc_top1"
    task = task_of(judged)
    took = f" in {_duration(elapsed)}" if elapsed is not None else ""
    status = (
        outcome.status
        if outcome.status != "failed" or outcome.exit_code != 2
        else "failed (bad input)"
    )
    lines = [f"── {status}{took} " + "─" * 40]
    evaluating = run is not None and "checkpoint" in run.info
    if evaluating:
        values = [
            f"{m.label} {percent(v)}"
            for m in judged_first(task, judged)
            if (v := _value(outcome.metrics, m.key.removeprefix("acc_"))) is not None
        ]
        if values:
            lines.append(f"{cfg.split:<9} {', '.join(values)}")
    else:
        best_line, test_line = metric_lines(task, judged, outcome.metrics, run_dir)
        lines += [f"val       {best_line}"] if best_line else []
        lines += [f"test      {test_line}"] if test_line else []
    if outcome.status != "ok":
        lines.append(f"why       {outcome.message}")
    if outcome.status == "failed" and run is None:
        made = ", ".join(sorted(p.name for p in run_dir.iterdir())) if run_dir.is_dir() else ""
        lines.append(f"run dir   {shown_dir} (holds only {made}: nothing was trained)")
        return lines
    lines.append(f"run dir   {shown_dir} (log: {_log_name(cfg)})")
    best, last = _checkpoints(run_dir, run)
    if not evaluating:
        found = (("best ckpt", best), ("last ckpt", last))
        lines += [f"{label:<9} {_shown_path(path)}" for label, path in found if path]
    if evaluating:
        lines.append(f"metrics   {_shown_path(run_dir / 'metrics.json')}")
    lines.append(_wandb_line(cfg, wandb))
    commands = [] if evaluating else _next_commands(cfg, outcome, best, shown_dir)
    for index, command in enumerate(commands):
        lines.append(f"{'next' if index == 0 else '':<9} {command}")
    return lines


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def job_line(cfg: DictConfig, outcome: Outcome, job: int, elapsed: float | None = None) -> str:
    """A sweep job's one line: ``job 3 ok · operator.kernel_size=5 ... · best val/acc_top1 95.56 %
    at epoch 11 · test top-1 96.30 % · 41 s`` (a job that did not finish: its status and why)."""
    from hydra.core.hydra_config import HydraConfig

    from involution.runs.identity import swept_overrides

    overrides = " ".join(f"{k}={v}" for k, v in swept_overrides(HydraConfig.get())) or "-"
    parts = [f"job {job} {outcome.status}", overrides]
    if outcome.status == "ok":
        judged = cfg.get("optimized_metric") or "val/acc_top1"
        best_line, test_line = metric_lines(
            task_of(judged), judged, outcome.metrics, Path(cfg.paths.output_dir)
        )
        parts += [best_line.split(" (")[0]] if best_line else []
        parts += [f"test {test_line.split(', ')[0]}"] if test_line else []
    else:
        parts.append(outcome.message)
    if elapsed is not None:
        parts.append(_duration(elapsed))
    return " · ".join(parts)


def closing(
    cfg: DictConfig,
    outcome: Outcome,
    run: Run | None,
    job: int | None,
    wandb: Mapping[str, str] | None = None,
    elapsed: float | None = None,
) -> None:
    """What a run says at its end, for every outcome (``run``: None when it was not built;
    ``job``: a multirun job's number; ``wandb``: the W&B run's mode, URL or directory;
    ``elapsed``: the job's seconds).

    A single run: ``error: <line>`` on stderr when it did not finish (bad input, divergence;
    ``preempted: ...``; an unexpected error's report is its traceback), then the closing summary
    (outcome, best validation metric and its epoch, the test metrics, run directory, best and
    last checkpoints, W&B, the next commands). A sweep's job: one line, the summary to its log.
    Everything lands in the run's log too.
    """
    if outcome.status == "preempted" and job is None:
        print(outcome.message, file=sys.stderr, flush=True)
    elif outcome.status != "ok" and job is None and outcome.exit_code != 1:
        print(f"error: {outcome.message}", file=sys.stderr, flush=True)
    if outcome.status != "ok" and outcome.exit_code == 1 and outcome.recorded is not None:
        log.error("%s", outcome.message, exc_info=outcome.recorded, extra=FILE_ONLY)
    elif outcome.status != "ok":
        log.error("%s", outcome.message, extra=FILE_ONLY)
    if rank_zero_only.rank != 0:
        return
    lines = closing_lines(cfg, outcome, run, wandb, elapsed)
    extra = FILE_ONLY if job is not None else None
    for line in lines:
        log.info(line, extra=extra)
    if job is not None:
        line = job_line(cfg, outcome, job, elapsed)
        if outcome.status != "ok" and outcome.exit_code == 1:
            line += f" (traceback in {_shown_path(Path(cfg.paths.output_dir) / _log_name(cfg))})"
        log.info(line)
