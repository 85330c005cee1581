"""Bad input -> one line naming the key or file and what is allowed, before anything is written.

One place for every entry point (``involution.train``; an evaluation entry point calls the same):

- :func:`check_overrides` (command line, before Hydra composes): a mistyped key (with the closest
  valid key) and a value of the wrong type for any key; the expected type comes from the
  signature of the key's ``_target_`` (trainer, data, callbacks) or of
  :class:`involution.lit.ImageClassifier` (``module.*``), else from the type of its default;
- :func:`check_config` (the composed config, before the run directory is created or touched):
  ranges of the model, operator, data and optimisation keys, the output directory, ``resume``,
  and the checkpoint files named by ``ckpt_path`` / ``model.checkpoint``;
- :class:`Preflight`, the Hydra callback that runs :func:`check_config` before a single run's
  directory is created (Hydra writes ``.hydra/`` into it right after);
- :func:`run_cli`: both, then the Hydra entry point; a problem ends the process with
  ``error: <one line>`` on stderr and status 2.

Problems only the built objects can show (a data directory's files, a checkpoint's architecture,
divisibility of widths by group channels) are found by ``involution.train.build_run`` before the
first training step and reported the same way.
"""

from __future__ import annotations

import difflib
import inspect
import math
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
    if not hints and parent_key == "module":
        from involution.lit import ImageClassifier

        hints = typing.get_type_hints(ImageClassifier.__init__)
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


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "operator.kernel_size": (lambda v: _positive_int(v) and v % 2 == 1, "an odd positive int"),
    "operator.group_channels": (
        lambda v: v is None or _positive_int(v),
        "a positive int or null (one group)",
    ),
    "operator.reduction_ratio": (_positive_int, "an int >= 1"),
    "operator.dilation": (_positive_int, "an int >= 1"),
    "operator.heads": (_positive_int, "an int >= 1"),
    "model.base_width": (_positive_int, "an int >= 1"),
    "model.stem_width": (_positive_int, "an int >= 1"),
    "data.batch_size": (_positive_int, "an int >= 1"),
    "data.num_workers": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "an int >= 0",
    ),
    "data.image_size": (lambda v: _positive_int(v) and v >= 8, "an int >= 8"),
    "module.lr": (
        lambda v: (
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        ),
        "a positive number",
    ),
    "module.weight_decay": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
        "a number >= 0",
    ),
    "module.momentum": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1,
        "a number in [0, 1)",
    ),
    "module.warmup_epochs": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
        "a number >= 0",
    ),
    "trainer.max_epochs": (
        lambda v: v is None or v == -1 or _positive_int(v),
        "an int >= 1 (or -1 / null: no limit)",
    ),
    "callbacks.step_checkpoint.every_n_train_steps": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "an int >= 0 (0: no step checkpoints)",
    ),
    "seed": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32,
        "an int in [0, 2**32)",
    ),
}


def check_ranges(cfg: DictConfig) -> None:
    for key, (ok, allowed) in RANGES.items():
        node = OmegaConf.select(cfg, key, default="<absent>")
        if isinstance(node, str) and node == "<absent>":
            continue
        if not ok(node):
            raise SetupError(f"{key} must be {allowed}, got {node!r}")


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
    from involution.resume import RESUME_MODES, run_checkpoints

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


def check_fits(state: Mapping[str, Any], own: Mapping[str, Any], source: str) -> None:
    """A resume checkpoint's ``state_dict`` has exactly the keys and shapes of the module's."""
    from involution.models.checkpoint import CheckpointMismatchError

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
                  if k in state and tuple(state[k].shape) != tuple(own[k].shape)]  # fmt: skip
    if missing or unexpected or mismatched:
        raise SetupError(
            CheckpointMismatchError(source, missing, unexpected, mismatched).one_line()
        )


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
        except SetupError as error:
            fail(str(error))
        finally:
            HydraConfig.instance().set_config(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_writable(str(OmegaConf.select(config, "hydra.sweep.dir")), "hydra.sweep.dir")
        except SetupError as error:
            fail(str(error))


def run_cli(task: Callable[[], Any], config_name: str, argv: list[str] | None = None) -> Any:
    """``resume=<dir>``/``latest`` expanded and the overrides checked, then the Hydra task runs."""
    from involution.resume import ResumeError, resume_argv

    args = sys.argv[1:] if argv is None else argv
    try:
        args = resume_argv(args)
        check_overrides(args, config_name)
    except (SetupError, ResumeError) as error:
        fail(str(error))
    sys.argv = [sys.argv[0], *args]
    return task()
