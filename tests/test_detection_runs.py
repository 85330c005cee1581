"""The detection and segmentation experiments on the one run path (involution.train,
involution.eval, involution.runner): trained, their best checkpoint kept on the task's metric,
evaluated and resumed like a classifier; bad input is one line before anything trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from involution.eval import evaluate
from involution.runner.preflight import SetupError
from involution.train import train

from conftest import CSV_ONLY, SCENE_FIT, SCENE_TASK, TINY_SCENES, compose_entry

FIT = [*SCENE_FIT, "test=false"]
SPLIT_VAL = [*TINY_SCENES, "split=val"]
# the task's metric: checkpoints keep the best by it, eval reports it under its short name
METRIC = {"detection_digits": "map", "segmentation_digits": "miou"}
MODEL = {
    "detection_digits": ("fasterrcnn", "detection"),
    "segmentation_digits": ("semantic_fpn", "segmentation"),
}


@pytest.fixture
def entry(tmp_path: Path):
    """entry(config, run dir name, overrides) -> the composed train or eval config."""
    yield lambda name, run, overrides: compose_entry(name, tmp_path / run, overrides)
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("experiment", ["detection_digits", "segmentation_digits"])
def test_experiment_trains_evaluates_and_resumes(entry, tmp_path: Path, experiment: str):
    overrides = [f"experiment={experiment}", *TINY_SCENES, *FIT, *SCENE_TASK[experiment]]
    metric = METRIC[experiment]
    metrics = train(entry("train", "run", overrides))
    assert {f"val/{metric}", f"best/val/{metric}"} <= set(metrics)
    checkpoints = tmp_path / "run" / "checkpoints"
    (best,) = checkpoints.glob("best-*.ckpt")

    # make eval CKPT=<best> ARGS="experiment=... split=val": the best score the fit kept
    result = evaluate(
        entry("eval", "eval", [f"experiment={experiment}", f"ckpt_path={best}", *SPLIT_VAL])
    )
    assert result["checkpoint_kind"] == "lightning" and result["split"] == "val"
    assert result["model"] == MODEL[experiment][0]
    assert result[metric] == pytest.approx(metrics[f"best/val/{metric}"])

    # without the experiment, the eval config's task is classification's: one line
    with pytest.raises(SetupError) as error:
        evaluate(entry("eval", "wrong", [f"ckpt_path={best}", *CSV_ONLY]))
    model, task = MODEL[experiment]
    assert str(error.value) == (
        f"checkpoint {str(best)!r} holds a {model} ({task}) but task=classification; "
        f"evaluate it with the experiment it was trained with (experiment=...) or "
        f"task={task} and its data"
    )

    # resume=auto: the same run directory with a longer schedule continues from last.ckpt (its
    # second epoch of one batch makes 3 steps; a fresh start would make 2)
    first = torch.load(checkpoints / "last.ckpt", weights_only=False)
    train(
        entry("train", "run", [*overrides, "trainer.max_epochs=2", "trainer.limit_train_batches=1"])
    )
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert (first["global_step"], last["global_step"]) == (2, 3)
    assert last["epoch"] == first["epoch"] + 1
