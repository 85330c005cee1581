"""What a run writes to its directory and prints only when asked: the config tree and the model
summary that names each stage's spatial operator and counts its multiply-adds with our counter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from involution.data import SyntheticDataModule
from involution.models import count_macs, create_model
from involution.runner.details import (
    CONFIG_TREE,
    MODEL_SUMMARY,
    OperatorModelSummary,
    describe_stage,
    print_config_tree,
)
from involution.tasks import ImageClassifier

from conftest import TINY_MODEL, tiny_trainer


def test_config_tree_is_printed_and_saved(compose_train, tmp_path: Path, capsys) -> None:
    cfg = compose_train(["operator.kernel_size=5"])
    path = print_config_tree(cfg, save_dir=tmp_path)
    printed = capsys.readouterr().out
    saved = path.read_text()
    assert path == tmp_path / CONFIG_TREE
    for text in (printed, saved):
        assert text.lstrip().startswith("CONFIG")
        assert "kernel_size: 5" in text and "reduction_ratio: 4" in text
        # groups first in the template's order, the Hydra node left out, values resolved
        assert (
            text.index("data")
            < text.index("model")
            < text.index("operator")
            < text.index("trainer")
        )
        assert "hydra" not in text.split("paths", 1)[0] and "${" not in text
    assert f"output_dir: {tmp_path / 'run'}" in saved  # resolved, one line in the file


def test_config_tree_is_saved_without_printing(compose_train, tmp_path: Path, capsys) -> None:
    path = print_config_tree(compose_train([]), save_dir=tmp_path, printed=False)
    assert capsys.readouterr().out == "" and "kernel_size: 7" in path.read_text()


@pytest.mark.parametrize(
    ("name", "operator"),
    [
        ("rednet26", "Involution2d(16, kernel_size=7"),
        ("resnet26", "Conv2d(16, 16, kernel_size=(3, 3)"),
        ("sasa26", "LocalSelfAttention2d(16, kernel_size=7"),
    ],
)
def test_stage_rows_name_the_spatial_operator(name: str, operator: str) -> None:
    extra = {"operator": {"heads": 2}} if name.startswith("sasa") else {}
    model = create_model(
        name, num_classes=10, in_channels=1, stem="small", base_width=16, stem_width=8, **extra
    )
    assert describe_stage(model.layer1).startswith(f"1 x Bottleneck: {operator}")
    assert describe_stage(model.layer3).startswith("4 x Bottleneck: ")
    assert describe_stage(model.fc) is None and describe_stage(model.stem) is None


@pytest.mark.parametrize("printed", [True, False])
def test_model_summary_counts_what_the_flop_counter_sees(
    printed: bool, tmp_path: Path, capsys
) -> None:
    """The MACs column is our count (the involution op included), its total the model's count;
    Lightning's FLOPs column (0 without an example input) is gone. Printed only when asked."""
    model = {**TINY_MODEL, "num_classes": 4, "in_channels": 3, "operator": {"group_channels": 4}}
    module = ImageClassifier(model)
    data = SyntheticDataModule(num_samples=8, image_size=16, num_classes=4, batch_size=4)
    summary = OperatorModelSummary(max_depth=2, save_dir=str(tmp_path), printed=printed)
    trainer = tiny_trainer(tmp_path, callbacks=[summary], max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    text = (tmp_path / MODEL_SUMMARY).read_text()
    shown = capsys.readouterr().out
    assert ("MACs" in shown) == printed and ("model.layer1" in shown) == printed
    assert "MACs" in text and "FLOPs" not in text and "Involution2d(" in text
    total = count_macs(create_model(**model), (3, 16, 16))
    row = next(line for line in text.splitlines() if " model " in line)
    assert counted(row.rstrip(" │").rsplit("│", 1)[1]) == pytest.approx(total, rel=1e-3)
    assert counted(text.split("Multiply-adds per image:")[1].splitlines()[0]) == pytest.approx(
        total, rel=1e-3
    )
    stages = [line for line in text.splitlines() if "model.layer" in line]
    assert len(stages) == 4 and all(
        counted(line.rstrip(" │").rsplit("│", 1)[1]) > 0 for line in stages
    )


def counted(cell: str) -> float:
    """``755.3 K`` -> 755300.0 (the summary's human-readable counts)."""
    number, _, unit = cell.strip().partition(" ")
    return float(number) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[unit.strip()]


@pytest.mark.slow
def test_training_run_writes_the_tree_and_the_operator_summary(limit_run) -> None:
    """By default neither is printed; both are in the run directory."""
    result, run_dir = limit_run
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "CONFIG" not in out and "┃ Name" not in out and "limit_train_batches" not in out
    assert "limit_train_batches: 5" in (run_dir / CONFIG_TREE).read_text()
    summary = (run_dir / MODEL_SUMMARY).read_text()
    summary = summary[summary.index("┃ Name") :]
    for stage in ("model.layer1", "model.layer2", "model.layer3", "model.layer4"):
        assert stage in summary
    assert summary.count("Bottleneck:") == 4 and summary.count("Involution2d(") == 4
    macs = json.loads((run_dir / "job.json").read_text())["macs"]
    total = counted(summary.split("Multiply-adds per image:")[1].splitlines()[0])
    assert total == pytest.approx(macs, rel=5e-3)


@pytest.mark.parametrize(
    ("overrides", "tree", "summary"),
    [([], False, False), (["verbose=true"], True, True), (["print_config=true"], True, False)],
)
def test_what_is_printed_is_asked_for(compose_train, overrides, tree, summary, capsys) -> None:
    """Quiet by default; verbose=true prints the tree and the model summary, print_config=true
    the tree alone; both are written to the run directory in every case."""
    from hydra.utils import instantiate

    from involution.runner.console import header

    cfg = compose_train(["logger=csv", *overrides])
    callback = instantiate(cfg.callbacks.model_summary)
    assert callback.printed is summary and callback.save_dir == cfg.paths.output_dir

    class Built:  # what header() reads of a built run
        info = {"params": 1, "macs": 1, "input_size": [1, 1, 8, 8]}
        module = datamodule = resume = None

    Built.cfg = cfg
    header(Built())
    assert ("CONFIG" in capsys.readouterr().out) is tree
    assert (Path(cfg.paths.output_dir) / CONFIG_TREE).is_file()
