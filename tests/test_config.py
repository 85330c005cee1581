"""Every option of every config group composes and resolves; unknown options list the choices."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.errors import MissingConfigException
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from involution.runs.callback import SummaryCallback

from conftest import REPO

CONF = REPO / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))
# the sections an experiment may change, each with the files that define its keys
SECTIONS = {"model": "model/*.yaml", "trainer": "trainer/*.yaml", "module": "task/*.yaml"}
# groups merged into the others (global package): nothing of their own to instantiate
GLOBAL_GROUPS = ("experiment", "debug", "sweep", "hparams_search", "task")


def test_train_config_selects_every_group(compose_train) -> None:
    choices = compose_train().hydra.runtime.choices
    assert set(GROUPS) <= set(choices), (
        f"groups the defaults list omits: {set(GROUPS) - set(choices)}"
    )
    assert choices.experiment == "digits"  # the default run is the digits experiment


def _targets(node: object) -> list[str]:
    """The node's `_target_`, else every entry's (callbacks, logger); empty when plain keys."""
    if not isinstance(node, DictConfig):
        return []
    if "_target_" in node:
        return [node._target_]
    entries = [entry for entry in node.values() if isinstance(entry, DictConfig)]
    return (
        [e._target_ for e in entries] if entries and all("_target_" in e for e in entries) else []
    )


# Hydra's own node and the global packages (overrides of other groups) have nothing to build
BUILT = [(group, option) for group, option in OPTIONS if group not in (*GLOBAL_GROUPS, "hydra")]


@pytest.mark.parametrize(("group", "option"), BUILT, ids=[f"{g}={o}" for g, o in BUILT])
def test_every_group_is_instantiable_or_says_why_it_is_plain_keys(
    compose_train, group: str, option: str
) -> None:
    targets = _targets(compose_train([f"{group}={option}"])[group])
    for target in targets:
        get_object(target)  # raises on a target that does not exist
    lines = (CONF / group / f"{option}.yaml").read_text().splitlines()
    header = " ".join(itertools.takewhile(lambda line: line.startswith("#"), lines)).lower()
    assert targets or "plain keys" in header, f"{group}/{option}.yaml: no _target_, no reason"


def _named_overrides() -> dict[tuple[str, str, str], object]:
    """(experiment, section, key) -> value from the `# experiments: a -> 1, b -> 2` lines above
    the keys of the files that define each section."""
    named: dict[tuple[str, str, str], object] = {}
    for section, pattern in SECTIONS.items():
        for path in CONF.glob(pattern):
            lines = path.read_text().splitlines()
            for comment, line in itertools.pairwise(lines):
                if comment.strip().startswith("# experiments:"):
                    key = line.split(":")[0].strip()
                    for pair in comment.split(":", 1)[1].split(","):
                        name, value = (part.strip() for part in pair.split("->"))
                        named[(name, section, key)] = yaml.safe_load(value)
    return named


def test_what_an_experiment_overrides_is_named_in_the_group(compose_train) -> None:
    """Each experiment against the same group options without it: every key it changes is named
    in the file that defines the key, with its value, and every name there is true."""
    named = _named_overrides()
    changed: dict[tuple[str, str, str], object] = {}
    for experiment in EXPERIMENTS:
        cfg = compose_train([f"experiment={experiment}"])
        options = [f"{group}={cfg.hydra.runtime.choices[group]}" for group in ("data", *SECTIONS)
                   if group in GROUPS]  # fmt: skip
        plain = compose_train(["~experiment", *options])
        for section in SECTIONS:
            for key, value in cfg[section].items():
                if plain[section].get(key) != value:
                    changed[(experiment, section, key)] = value
    assert changed == named
    assert ("digits", "model", "base_width") in changed  # the default run is not the group's 64


SWEEPS = sorted(path.stem for path in (CONF / "sweep").glob("*.yaml")) + ["hparams"]


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_ends_with_the_summary_table(compose_train, sweep: str) -> None:
    """hydra/default.yaml installs the summary callback; sweep configs need not select it."""
    cfg = compose_train(
        ["hparams_search=digits_optuna" if sweep == "hparams" else f"sweep={sweep}"]
    )
    assert get_object(cfg.hydra.callbacks.summary._target_) is SummaryCallback
    assert cfg.hydra.mode == RunMode.MULTIRUN


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes(compose_train, group: str, option: str) -> None:
    if group in ("hydra", "paths"):
        cfg = compose_train()  # selected by the defaults list; they only have one option
    else:
        cfg = compose_train([f"{group}={option}"])
        assert OmegaConf.select(cfg, group) is not None or group in (
            "experiment",
            "debug",
            "task",
        )  # global packages
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    assert resolved["paths"]["output_dir"].endswith("run")


def test_operator_hyperparameters_are_keys(compose_train) -> None:
    cfg = compose_train(
        ["operator.kernel_size=5", "operator.reduction_ratio=2", "operator.group_channels=8"]
    )
    assert (
        cfg.operator.kernel_size,
        cfg.operator.reduction_ratio,
        cfg.operator.group_channels,
    ) == (5, 2, 8)
    assert set(cfg.operator) >= {"kernel_size", "group_channels", "reduction_ratio", "backend"}


def test_unknown_group_option_lists_the_choices(compose_train) -> None:
    with pytest.raises(MissingConfigException, match="Available options in 'operator'") as error:
        compose_train(["operator=deformable"])
    assert "convolution" in str(error.value) and "involution" in str(error.value)


def test_run_directories_follow_the_layout(tmp_path: Path) -> None:
    """Single runs go to outputs/<task>/<date>/<time>; multiruns to multirun/..."""
    code = (
        "from hydra import compose, initialize_config_module\n"
        "with initialize_config_module('involution.conf', version_base='1.3'):\n"
        "    cfg = compose('train', return_hydra_config=True)\n"
        "print(cfg.hydra.run.dir); print(cfg.hydra.sweep.dir)\n"
    )
    lines = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert lines[0].startswith("outputs/train/") and len(lines[0].split("/")) == 4
    assert lines[1].startswith("multirun/train/")
