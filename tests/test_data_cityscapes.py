"""Cityscapes through torchvision's Cityscapes on a small folder in the real layout (the digit
scenes written as leftImg8bit / gtFine labelIds PNGs), mmseg's pipeline, and every bad-input
error."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from involution.data import CityscapesDataModule, SceneSegmentationDataModule
from involution.data.cityscapes import CategoryBalancedCrop
from involution.data.scene_files import write_cityscapes
from involution.runner.build import build as build_run
from involution.runner.preflight import SetupError

SIZES = {"train": 4, "val": 3, "test": 2}
# whole 64 x 64 scenes, no augmentation: what the files hold
PLAIN = {"scale": (64, 64), "ratio_range": (1.0, 1.0), "crop_size": (64, 64), "hflip": 0.0,
         "photometric": False, "cat_max_ratio": 1.0, "num_workers": 0}  # fmt: skip


@pytest.fixture
def cityscapes(tmp_path: Path) -> Path:
    return write_cityscapes(tmp_path / "cityscapes", sizes=SIZES, seed=3)


def _label_file(root: Path, split: str, index: int) -> Path:
    return root / "gtFine" / split / "scenes" / f"scenes_{index:06d}_000019_gtFine_labelIds.png"


def test_label_ids_read_back_as_train_ids(cityscapes: Path) -> None:
    # label ids 0 (unlabeled), 1 (ego vehicle) and 9 (parking) are not evaluated: 255
    path = _label_file(cityscapes, "val", 1)
    labels = np.array(Image.open(path))
    labels[0, :], labels[:, 0], labels[5, 5] = 0, 1, 9
    Image.fromarray(labels).save(path)
    dm = CityscapesDataModule(data_dir=str(cityscapes), batch_size=3, **PLAIN)
    assert (dm.num_classes, dm.ignore_index, dm.in_channels) == (19, 255, 3)
    assert dm.class_names[0] == "road" and dm.class_names[18] == "bicycle"
    dm.setup()
    scenes = SceneSegmentationDataModule(train_size=4, val_size=3, test_size=2, seed=3)
    scenes.setup()
    images, masks = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, 64, 64) and masks.shape == (3, 64, 64)
    assert images.dtype == torch.float32 and masks.dtype == torch.int64
    # cities and files are listed in directory order; match the scenes by image
    expected = {int(scenes.val_set[i][0].sum() * 255): scenes.val_set[i] for i in range(3)}
    assert len(expected) == 3
    edits = 0
    for image, mask in zip(images, masks):
        scene_image, scene_mask = expected[int(image.sum() * 255)]
        assert torch.equal(image, scene_image)
        edited = mask[0].eq(255).all() and mask[:, 0].eq(255).all()
        if edited:
            edits += 1
            assert mask[5, 5] == 255
            scene_mask = scene_mask.clone()
            scene_mask[0, :] = scene_mask[:, 0] = scene_mask[5, 5] = 255
        assert torch.equal(mask, scene_mask)
    assert edits == 1
    assert dm.test_set is dm.val_set  # Cityscapes' test labels are not public


def test_training_batches_are_crops_with_ignored_padding(cityscapes: Path) -> None:
    keys = {**PLAIN, "ratio_range": (0.5, 0.5), "crop_size": (32, 48), "batch_size": 4}
    dm = CityscapesDataModule(data_dir=str(cityscapes), **keys)
    assert dm.image_size == (32, 48)
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 48) and masks.shape == (4, 32, 48)
    # scaled to 32 x 32, the 48-wide crop is padded: image 0, mask ignored
    padded = masks.eq(255).all(dim=1)  # [N, W]: columns wholly ignored
    assert padded.sum(1).eq(16).all()
    assert images.permute(0, 3, 1, 2)[padded].eq(0).all()
    assert set(masks[~masks.eq(255)].unique().tolist()) <= set(range(19))


def test_image_and_mask_are_scaled_and_flipped_together(cityscapes: Path) -> None:
    keys = {**PLAIN, "ratio_range": (2.0, 2.0), "crop_size": (128, 128), "hflip": 1.0}
    dm = CityscapesDataModule(data_dir=str(cityscapes), **keys)
    plain = CityscapesDataModule(data_dir=str(cityscapes), **PLAIN)
    dm.setup("fit")
    plain.setup("fit")
    for index in range(len(dm.train_set)):
        image, mask = dm.train_set[index]
        original, original_mask = plain.train_set[index]
        pixels = (original * 255).round().to(torch.uint8)
        expected = F.to_dtype(F.horizontal_flip(F.resize(pixels, [128, 128])), scale=True)
        assert torch.equal(image, expected)
        expected_mask = F.horizontal_flip(F.resize(tv_tensors.Mask(original_mask), [128, 128]))
        assert torch.equal(mask.as_subclass(torch.Tensor), expected_mask.as_subclass(torch.Tensor))


def test_crops_are_redrawn_while_one_class_dominates() -> None:
    """mmseg's cat_max_ratio: a 10-wide window over two 20-wide classes is balanced at 5 of 31
    positions; redrawing up to 10 times finds one most of the time."""
    mask = tv_tensors.Mask(torch.zeros(1, 8, 40, dtype=torch.uint8))
    mask[..., 20:] = 1
    mask[..., :4, :] = 255  # ignored pixels do not count

    def balanced_share(ratio: float) -> float:
        crop = CategoryBalancedCrop((8, 10), ratio, 255)
        torch.manual_seed(0)
        hits = 0
        for _ in range(200):
            out = crop(mask)[..., 4:, :]
            share = out.eq(1).float().mean().item()
            hits += 0 < share < 1 and max(share, 1 - share) < 0.75
        return hits / 200

    assert balanced_share(0.75) > 0.6 and balanced_share(1.0) < 0.35


def test_the_config_group_builds_the_module(compose_train, cityscapes: Path) -> None:
    cfg = compose_train(["data=cityscapes", f"data.data_dir={cityscapes}", "data.num_workers=0"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, CityscapesDataModule) and dm.image_size == (512, 1024)
    dm.setup()
    assert len(dm.train_set) == 4 and len(dm.val_set) == 3


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming what is missing or wrong, before any training


def test_a_folder_that_is_not_cityscapes_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.data_dir=.*does not exist"):
        CityscapesDataModule(data_dir=str(tmp_path / "absent"))
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as error:
        CityscapesDataModule(data_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "not a Cityscapes folder" in message
    missing = message.split("no ", 1)[1].split(" (")[0]
    assert missing == "gtFine/train, leftImg8bit/val, gtFine/val"


def test_a_test_split_needs_its_folders(cityscapes: Path) -> None:
    shutil.rmtree(cityscapes / "gtFine" / "test")
    CityscapesDataModule(data_dir=str(cityscapes))  # val serves as test
    with pytest.raises(FileNotFoundError, match="no gtFine/test"):
        CityscapesDataModule(data_dir=str(cityscapes), test_split="test")


def test_a_missing_label_file_is_named(cityscapes: Path) -> None:
    _label_file(cityscapes, "train", 2).unlink()
    dm = CityscapesDataModule(data_dir=str(cityscapes), **PLAIN)
    with pytest.raises(FileNotFoundError) as error:
        dm.setup()
    message = str(error.value)
    assert "gtFine/train/scenes/scenes_000002_000019_gtFine_labelIds.png is missing" in message
    assert "1 of the 4 train images" in message


@pytest.mark.parametrize(
    ("stray", "named"),
    [
        ("leftImg8bit/val/scenes/notes.txt", "leftImg8bit/val/scenes/notes.txt is not a"),
        ("leftImg8bit/val/README", "leftImg8bit/val/README is not a city folder"),
    ],
)
def test_a_stray_file_is_named(cityscapes: Path, stray: str, named: str) -> None:
    (cityscapes / stray).write_text("not an image")
    dm = CityscapesDataModule(data_dir=str(cityscapes), **PLAIN)
    with pytest.raises(ValueError, match=re.escape(named)):
        dm.setup()


def test_an_empty_split_is_named(cityscapes: Path) -> None:
    shutil.rmtree(cityscapes / "leftImg8bit" / "val" / "scenes")
    dm = CityscapesDataModule(data_dir=str(cityscapes), **PLAIN)
    with pytest.raises(FileNotFoundError, match="leftImg8bit/val holds no images"):
        dm.setup()


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"crop_size": [0, 10]}, "data.crop_size"),
        ({"scale": "big"}, "data.scale"),
        ({"ratio_range": [2.0, 1.0]}, "data.ratio_range"),
        ({"cat_max_ratio": 0}, "data.cat_max_ratio"),
        ({"hflip": 3}, "data.hflip"),
        ({"test_split": "train"}, "data.test_split"),
    ],
)
def test_bad_keys_are_named(cityscapes: Path, keys: dict, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        CityscapesDataModule(data_dir=str(cityscapes), **keys)


def test_the_run_path_reports_a_broken_folder_in_one_line(compose_train, tmp_path: Path) -> None:
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    cfg = compose_train(["data=cityscapes", f"data.data_dir={tmp_path}", "data.num_workers=0"])
    with pytest.raises(SetupError) as error:
        build_run(cfg)
    message = str(error.value)
    assert "\n" not in message and "no leftImg8bit/train, gtFine/train, leftImg8bit/val" in message
