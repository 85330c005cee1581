"""Pre-flight: bad input -> one line naming the key or file and what is allowed, before anything
is built or written. The same checks for every entry point:

- :func:`check_overrides` (command line, before Hydra composes): a mistyped key (with the closest
  valid key) and a value of the wrong type; the type comes from the signature of the key's
  ``_target_`` (trainer, data, callbacks, the task's LightningModule), else from its default;
- :func:`check_config` (the composed config, before the run directory is created or touched):
  every range rule (each read from the table its constructor checks too, see
  :func:`check_ranges`), the output directory, ``resume``, and the checkpoint files named by
  ``ckpt_path`` / ``model.checkpoint``;
- :class:`Preflight`, the Hydra callback that runs :func:`check_config` and the data module's
  constructor (:func:`instantiate_data`: a missing or empty data directory) before a single run's
  directory is created (Hydra writes ``.hydra/`` into it right after);
- :func:`run_cli`: ``resume=`` expanded and the overrides checked, then the Hydra entry point; a
  problem ends the process with ``error: <one line>`` on stderr and status 2.

Problems only the built objects can show (a data directory's files, a checkpoint's architecture,
divisibility of widths by group channels) are found by the builder (``involution.runner.build``)
before the first step and reported the same way.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from involution import rules
from involution.runner.resume import RESUME_MODES, ResumeError, resume_argv, run_checkpoints


class SetupError(ValueError):
    """A configuration problem found before training; its message is the one line users see."""


# ---------------------------------------------------------------------------------------------
# Command line: keys and types


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, DictConfig):
        for key in node.keys():
            full = f"{prefix}{key}"
            value = node._get_node(key)
            out[full] = value
            if isinstance(value, DictConfig):
                out.update(_flatten(value, full + "."))
    return out


def closest_key(key: str, cfg: DictConfig) -> str | None:
    """The valid key nearest to ``key`` (same parent first, then anywhere)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig):
        near = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=1, cutoff=0.6)
        if near:
            return f"{parent}.{near[0]}" if parent else near[0]
    # elsewhere: a leaf spelled almost alike under another parent (``model.lr`` -> ``module.lr``)
    by_leaf: dict[str, str] = {}
    for full in _flatten(cfg):
        if not full.startswith("hydra."):
            by_leaf.setdefault(full.rpartition(".")[2], full)
    near = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.8)
    return by_leaf[near[0]] if near else None


def _target_signature(node: Any) -> dict[str, Any]:
    """Type hints of the ``_target_`` callable of a config node ({} when unknown)."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return {}
    from hydra.utils import get_object

    try:
        target = get_object(str(node._get_node("_target_")._value()))
        function = target.__init__ if inspect.isclass(target) else target
        return typing.get_type_hints(function)
    except Exception:  # a target that cannot be imported here, or hints that do not evaluate
        return {}


def _expected(reference: DictConfig, key: str) -> tuple[Any, bool] | None:
    """(annotation or type, from_signature) for ``key``; None when nothing is known."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(reference, parent_key) if parent_key else reference
    hints = _target_signature(parent)
    if leaf in hints:
        return hints[leaf], True
    node = parent._get_node(leaf) if isinstance(parent, DictConfig) else None
    if node is None or isinstance(node, DictConfig | ListConfig):
        return None
    value = node._value()
    if value is None or (isinstance(value, str) and "${" in value):
        return None
    return type(value), False


def matches(value: Any, annotation: Any) -> bool:
    """Whether a command-line value fits a type annotation (unknown classes are given the
    benefit)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        return isinstance(value, list | tuple)
    if origin in (dict, Mapping) or annotation is dict:
        return isinstance(value, dict)
    return True


def describe(annotation: Any) -> str:
    """``Optional[int]`` -> ``an int or null``."""
    names = {int: "an int", float: "a number", bool: "true or false", str: "a string",
             type(None): "null", list: "a list", dict: "a mapping"}  # fmt: skip
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = list(dict.fromkeys(describe(arg) for arg in typing.get_args(annotation)))
        return " or ".join(parts)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (list, tuple, Sequence):
        return "a list"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _shown(value: Any) -> str:
    return f"the string {value!r}" if isinstance(value, str) else repr(value)


def check_value_type(reference: DictConfig, key: str, values: Sequence[Any]) -> None:
    expected = _expected(reference, key)
    if expected is None:
        return
    annotation, from_signature = expected
    if not from_signature:
        # a default's type: null stays allowed (many keys take it), ints count as numbers, and a
        # string key takes any scalar (OmegaConf turns it into text)
        annotation = {float: float | int, str: str | int | float}.get(annotation, annotation) | None
    for value in values:
        if isinstance(value, str) and "${" in value:
            continue
        if not matches(value, annotation):
            raise SetupError(f"{key}={value}: expected {describe(annotation)}, got {_shown(value)}")


def _compose(config_module: str, config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides=overrides, return_hydra_config=True)
    with initialize_config_module(config_module=config_module, version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def check_overrides(
    args: Sequence[str], config_name: str = "train", config_module: str = "involution.conf"
) -> None:
    """Raise SetupError for a mistyped key or a value of the wrong type among command-line
    overrides.

    Anything this cannot judge (Hydra flags, parse errors, unknown group options) is left to
    Hydra, which reports it itself.
    """
    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in args):
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException

    overrides = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        base = _compose(config_module, config_name, [])
    except HydraException:
        return
    groups = set(base.hydra.runtime.choices.keys())
    choice_overrides, values = [], []
    for override in parsed:
        key = override.key_or_group
        if key in groups or "/" in key or override.is_add() or override.is_delete():
            if override.is_sweep_override():
                value = override.value()
                if not isinstance(value, ChoiceSweep):
                    continue
                first = value.list[0]
                choice_overrides.append(f"{override.get_key_element()}={first}")
            else:
                choice_overrides.append(override.input_line or "")
        else:
            values.append(override)
    try:
        reference = (
            _compose(config_module, config_name, choice_overrides) if choice_overrides else base
        )
    except HydraException:
        return
    for override in values:
        key = override.key_or_group
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue  # Hydra's own config is typed; Hydra reports those errors itself
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(reference, parent_key) if parent_key else reference
        if not isinstance(parent, DictConfig) or leaf not in parent:
            near = closest_key(key, reference)
            hint = f" (did you mean {near}?)" if near else ""
            raise SetupError(f"{key} is not a config key{hint}; to add a new key use +{key}=...")
        if override.is_sweep_override():
            value = override.value()
            if not isinstance(value, ChoiceSweep):
                continue
            candidates = list(value.list)
        else:
            candidates = [override.value()]
        check_value_type(reference, key, candidates)


# ---------------------------------------------------------------------------------------------
# The composed config: ranges, directories, files

# Keys that no constructor of ours takes (Lightning's, the run's own): their rules live here.
RUN_RULES: dict[str, rules.Rule] = {
    "data.image_size": rules.int_at_least(8),
    "trainer.max_epochs": (
        lambda v: v is None or v == -1 or (rules.is_int(v) and v >= 1),
        "an int >= 1 (or -1 / null: no limit)",
    ),
    "callbacks.step_checkpoint.every_n_train_steps": (
        lambda v: rules.is_int(v) and v >= 0,
        "an int >= 0 (0: no step checkpoints)",
    ),
    "seed": (lambda v: rules.is_int(v) and 0 <= v < 2**32, "an int in [0, 2**32)"),
    "split": (lambda v: v in ("test", "val"), "one of ('test', 'val')"),  # evaluation's
}


def _built_nodes(node: DictConfig, prefix: str = "") -> list[tuple[str, DictConfig]]:
    """(key, node) of every node with a ``_target_`` (Hydra's own node left out)."""
    found = []
    for key in node.keys():
        child = node._get_node(key)
        if not isinstance(child, DictConfig) or key == "hydra":
            continue
        if "_target_" in child:
            found.append((f"{prefix}{key}", child))
        found += _built_nodes(child, f"{prefix}{key}.")
    return found


def check_ranges(cfg: DictConfig) -> None:
    """Every range rule, each read from the one table its constructor checks too: the operator
    group's (``involution.layers``), the model widths' (``involution.models.network``), the
    ``ARGUMENT_RULES`` of every ``_target_`` (data module, task), then the run's own."""
    from hydra.utils import get_object

    from involution.layers import check_operator_spec
    from involution.models.network import WIDTH_RULES

    try:
        if isinstance(cfg.get("operator"), DictConfig):
            check_operator_spec(cfg.operator)
        if isinstance(cfg.get("model"), DictConfig):
            rules.check(cfg.model, WIDTH_RULES, "model")
        for key, node in _built_nodes(cfg):
            try:
                table = getattr(get_object(str(node._target_)), "ARGUMENT_RULES", None)
            except Exception:  # a target that cannot be imported is instantiate's to report
                table = None
            if table:
                rules.check(node, table, key)
        absent = object()
        values = {key: OmegaConf.select(cfg, key, default=absent) for key in RUN_RULES}
        rules.check({k: v for k, v in values.items() if v is not absent}, RUN_RULES, "")
    except ValueError as error:
        raise SetupError(str(error)) from None


def check_writable(path: str | Path, key: str) -> None:
    """``path`` exists as a writable directory, or can be created (its nearest existing parent is a
    writable directory). Probes with a temporary file that is removed at once."""
    target = Path(path).absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SetupError(f"{key}={path}: cannot be created, {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise SetupError(
            f"{key}={path}: cannot be written ({existing}: {error.strerror or error})"
        ) from None


def check_checkpoint_file(path: str, key: str) -> None:
    from involution.models.checkpoint import CheckpointFileError, read_checkpoint

    try:
        read_checkpoint(path, mmap=True)
    except (CheckpointFileError, FileNotFoundError) as error:
        raise SetupError(f"{key}: {error}") from None


def check_config(cfg: DictConfig, run_dir: str | Path | None = None) -> None:
    """Raise SetupError for the first problem of a composed config (see the module docstring).

    ``run_dir`` is the directory the run will write (default ``paths.output_dir``).
    """
    check_ranges(cfg)
    output = str(run_dir if run_dir is not None else cfg.paths.output_dir)
    check_writable(output, "paths.output_dir")
    resume = str(OmegaConf.select(cfg, "resume", default="auto"))
    if resume not in RESUME_MODES:
        raise SetupError(
            f"resume={resume}: inside a config it must be one of {', '.join(RESUME_MODES)} "
            "(a run directory or 'latest' is a command-line form: "
            "python -m involution.train resume=DIR)"
        )
    existing = run_checkpoints(output) if Path(output).is_dir() else []
    ckpt_path = OmegaConf.select(cfg, "ckpt_path")
    if resume == "never" and existing and not ckpt_path:
        raise SetupError(
            f"resume=never, but {output} already holds checkpoints ({existing[0].name}); "
            "use another hydra.run.dir, or resume=auto to continue it"
        )
    if ckpt_path:
        check_checkpoint_file(str(ckpt_path), f"ckpt_path={ckpt_path}")
    pretrained = OmegaConf.select(cfg, "model.checkpoint")
    if pretrained:
        check_checkpoint_file(str(pretrained), f"model.checkpoint={pretrained}")


def instantiate_data(cfg: DictConfig) -> Any:
    """The data module of ``cfg.data``; its constructor's own error (a data directory that is
    missing or empty, a bad argument) as SetupError, one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        try:
            return instantiate(cfg.data)
        except InstantiationException as error:  # the data module's own message is the useful one
            raise error.__cause__ or error from None
    except (ValueError, TypeError, FileNotFoundError) as error:
        lines = str(error).strip().splitlines()
        raise SetupError(lines[0] if lines else type(error).__name__) from error


# ---------------------------------------------------------------------------------------------
# Entry points


def _with_run_dir(config: DictConfig) -> tuple[DictConfig, str]:
    """A copy of a single run's config whose ``${hydra:runtime.output_dir}`` resolves (Hydra sets it
    only when the job starts)."""
    from hydra.core.hydra_config import HydraConfig

    copy = deepcopy(config)
    run_dir = str(OmegaConf.select(copy, "hydra.run.dir"))
    with read_write(copy.hydra), open_dict(copy.hydra):
        copy.hydra.runtime.output_dir = os.path.abspath(run_dir)
    HydraConfig.instance().set_config(copy)
    return copy, run_dir


def fail(message: str, status: int = 2) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


class Preflight(Callback):
    """Hydra callback: :func:`check_config` before a single run's directory is created or
    written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        copy, run_dir = _with_run_dir(config)
        try:
            check_writable(run_dir, "hydra.run.dir")
            check_config(copy, run_dir=OmegaConf.select(copy, "paths.output_dir"))
            if isinstance(copy.get("data"), DictConfig):
                instantiate_data(copy)  # its constructor checks the data directory
        except SetupError as error:
            fail(str(error))
        finally:
            HydraConfig.instance().set_config(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_writable(str(OmegaConf.select(config, "hydra.sweep.dir")), "hydra.sweep.dir")
        except SetupError as error:
            fail(str(error))


def run_cli(
    task: Callable[[], Any], config_name: str, argv: list[str] | None = None, resumable: bool = True
) -> Any:
    """``resume=<dir>``/``latest`` expanded (``resumable``) and the overrides checked, then the
    Hydra task runs."""
    args = sys.argv[1:] if argv is None else argv
    try:
        args = resume_argv(args) if resumable else list(args)
        check_overrides(args, config_name)
    except (SetupError, ResumeError) as error:
        fail(str(error))
    sys.argv = [sys.argv[0], *args]
    return task()
