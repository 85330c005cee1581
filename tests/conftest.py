"""Shared fixtures: offline W&B, and Hydra configs composed the way `python -m involution.train` does."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# Tests never talk to the W&B servers, even on a machine that is logged in.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("HYDRA_FULL_ERROR", None)

REPO = Path(__file__).resolve().parents[1]

# A few batches of a tiny digits run: enough to exercise every stage of train.py quickly.
QUICK_TRAIN = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=1",
    "data.batch_size=16",
    "callbacks.progress_bar.refresh_rate=0",
]


@pytest.fixture
def compose_train(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """compose_train(overrides) -> the train config, with Hydra's runtime set to a temporary run dir."""

    def _compose(overrides: list[str] | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="involution.conf", version_base="1.3"):
            cfg = compose("train", overrides=overrides or [], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
