"""involution.runner.build, the one builder: the task's LightningModule from ``module._target_``
with the model and operator groups and the data's shape; what only the built objects can show
(a data directory, widths, a checkpoint's architecture) is one line naming the key or file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from involution.models import create_model
from involution.runner.build import build
from involution.runner.preflight import SetupError
from involution.tasks import ImageClassifier

from conftest import CSV_ONLY, TINY_WIDTHS

SMALL_MODEL = ["data.image_size=16", *TINY_WIDTHS]


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and message.strip(), message
    return message


class RecordingClassifier(ImageClassifier):
    """A task module named by ``module._target_``: what the builder hands it is kept."""

    def __init__(self, model: dict, **hyper) -> None:
        super().__init__(model, **hyper)
        self.given = dict(model=model, **hyper)


def test_the_task_module_is_built_from_its_target(compose_train) -> None:
    target = f"{__name__}.RecordingClassifier"
    cfg = compose_train([*SMALL_MODEL, *CSV_ONLY, f"module._target_={target}", "module.lr=0.3"])
    run = build(cfg)
    assert type(run.module) is RecordingClassifier and run.module.given["lr"] == 0.3
    model = run.module.given["model"]
    assert (model["num_classes"], model["in_channels"]) == (10, 1)  # the data's shape
    assert (
        model["operator"]["kernel_size"] == cfg.operator.kernel_size and model["base_width"] == 16
    )
    assert run.info["params"] == sum(p.numel() for p in run.module.model.parameters())
    assert run.identity["name"] == "involution-d1-gc16-k7-r4" and run.resume is None


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["operator.kernel_size=4"], "operator.kernel_size"),
        (["operator.group_channels=5"], "operator.group_channels"),
        (["operator.reduction_ratio=0"], "operator.reduction_ratio"),
        (["data=cifar10", "data.data_dir=/nonexistent/cifar"], "data.data_dir"),
        (["data=imagenet", "data.data_dir=/nonexistent/imagenet"], "data.data_dir"),
        (["module.lr=-1"], "module.lr"),
    ],
)
def test_bad_config_is_one_error_naming_the_key(compose_train, overrides, key) -> None:
    with pytest.raises(SetupError) as error:
        build(compose_train(overrides))
    message = str(error.value)
    assert key in message and "\n" not in message


def test_width_not_divisible_by_group_channels_is_found_while_building(compose_train) -> None:
    with pytest.raises(SetupError) as error:
        build(compose_train([*SMALL_MODEL, "operator.group_channels=5"]))
    assert "operator.group_channels" in one_line(error.value)


# ---------------------------------------------------------------------------------------------
# Data directories


def _image_folder(root: Path, corrupt: bool = False) -> Path:
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 20), (i * 90, 30, 60)).save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return root


@pytest.mark.parametrize("case", ["missing", "empty", "no images", "corrupt"])
def test_bad_data_directory_names_it(compose_train, tmp_path: Path, case: str) -> None:
    data = tmp_path / "images"
    if case == "empty":
        (data / "train").mkdir(parents=True)
        (data / "val").mkdir()
    elif case == "no images":
        (data / "train" / "cat").mkdir(parents=True)
        (data / "val" / "cat").mkdir(parents=True)
    elif case == "corrupt":
        _image_folder(data, corrupt=True)
    cfg = compose_train(
        ["data=imagenet", f"data.data_dir={data}", "data.image_size=16", "data.num_workers=0"]
    )
    with pytest.raises(SetupError) as error:
        build(cfg)
    message = one_line(error.value)
    assert f"data.data_dir={str(data)!r}" in message or "data.data_dir:" in message
    if case == "corrupt":
        assert f"unreadable or corrupt image {data / 'train' / 'dog' / '1.png'}" in message


def test_good_image_folder_builds(compose_train, tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "images")
    overrides = ["data=imagenet", f"data.data_dir={data}", "data.num_workers=0", *SMALL_MODEL]
    run = build(compose_train([*overrides, *CSV_ONLY]))
    assert run.datamodule.num_classes == 2 and len(run.datamodule.train_set) == 4


def test_checkpoint_of_another_architecture_lists_the_keys(compose_train, tmp_path: Path) -> None:
    other = create_model(
        "rednet38", num_classes=10, in_channels=1, stem="small", base_width=16, stem_width=8
    )
    path = tmp_path / "rednet38.pth"
    torch.save({"state_dict": other.state_dict()}, path)
    with pytest.raises(SetupError) as error:
        build(compose_train([*SMALL_MODEL, f"model.checkpoint={path}", "logger=csv"]))
    message = one_line(error.value)
    assert message.startswith("model.checkpoint: checkpoint") and "another architecture" in message
    assert "unexpected keys (layer1.1." in message
