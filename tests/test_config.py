"""Every option of every config group composes and resolves; unknown options list the choices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from conftest import REPO

CONF = REPO / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


def test_the_issue_groups_exist() -> None:
    required = {"operator", "model", "data", "trainer", "logger", "callbacks", "paths", "hydra", "experiment"}
    assert required <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes(compose_train, group: str, option: str) -> None:
    if group in ("hydra", "paths"):
        cfg = compose_train()  # selected by the defaults list; they only have one option
    else:
        cfg = compose_train([f"{group}={option}"])
        assert OmegaConf.select(cfg, group) is not None or group in ("experiment", "debug")  # global packages
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    assert resolved["paths"]["output_dir"].endswith("run")


def test_operator_hyperparameters_are_keys(compose_train) -> None:
    cfg = compose_train(["operator.kernel_size=5", "operator.reduction_ratio=2", "operator.group_channels=8"])
    assert (cfg.operator.kernel_size, cfg.operator.reduction_ratio, cfg.operator.group_channels) == (5, 2, 8)
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
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert lines[0].startswith("outputs/train/") and len(lines[0].split("/")) == 4
    assert lines[1].startswith("multirun/train/")
