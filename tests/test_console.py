"""What a run shows at its start: the config tree (printed and saved) and the model summary that
names each stage's spatial operator."""

from __future__ import annotations

from pathlib import Path

import pytest

from involution.models import create_model
from involution.runner.console import CONFIG_TREE, describe_stage, print_config_tree


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


@pytest.mark.slow
def test_training_run_prints_the_tree_and_the_operator_summary(limit_run) -> None:
    result, run_dir = limit_run
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.lstrip().startswith("CONFIG") and "limit_train_batches: 5" in out
    assert "limit_train_batches: 5" in (run_dir / CONFIG_TREE).read_text()
    summary = out[out.index("┃ Name") :]
    for stage in ("model.layer1", "model.layer2", "model.layer3", "model.layer4"):
        assert stage in summary
    assert summary.count("Bottleneck:") == 4 and summary.count("Involution2d(") == 4
