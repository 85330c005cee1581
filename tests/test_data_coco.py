"""COCO-format data through torchvision's CocoDetection and the v2 wrapper, on real-format files the
tests write (the digit scenes as PNG + instances json with RLE masks), and every bad-input error."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.transforms.v2 import functional as F
from torchvision.tv_tensors import Mask

from involution.data import COCODataModule, SceneDetectionDataModule
from involution.data.scene_files import write_coco
from involution.runner.build import build as build_run
from involution.runner.preflight import SetupError

SIZES = {"train": 6, "val": 5, "test": 3}
PLAIN = {"train_short_sides": None, "eval_short_side": None, "hflip": 0.0, "num_workers": 0}


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    return write_coco(tmp_path / "coco", sizes=SIZES, seed=7)


def _edit(root: Path, split: str, change: Any) -> Path:
    """Apply ``change`` to the split's parsed annotation file and write it back."""
    path = root / "annotations" / f"instances_{split}2017.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return path


def _raises(error: type[Exception], dm: COCODataModule, *named: str) -> str:
    """setup() raises ``error`` whose one-line message contains every ``named`` string."""
    with pytest.raises(error) as caught:
        dm.setup()
    message = str(caught.value)
    assert "\n" not in message
    for text in named:
        assert text in message, f"{text!r} not in {message!r}"
    return message


def test_written_scenes_read_back_exactly(coco: Path) -> None:
    dm = COCODataModule(data_dir=str(coco), **PLAIN)
    assert dm.num_classes == 10 and dm.class_names == [str(d) for d in range(10)]
    assert dm.in_channels == 3 and dm.has_masks
    dm.setup()
    scenes = SceneDetectionDataModule(
        train_size=6, val_size=5, test_size=3, seed=7, fresh_train_scenes=False
    )
    scenes.setup()
    for ours, theirs in ((dm.val_set, scenes.val_set), (dm.train_set, scenes.train_set)):
        assert len(ours) == len(theirs)
        for index in range(len(ours)):
            image, target = ours[index]
            expected_image, expected = theirs[index]
            assert torch.equal(image, expected_image)
            for key in ("boxes", "labels", "masks"):
                assert torch.equal(
                    torch.as_tensor(target[key]).to(expected[key].dtype), expected[key]
                )
            assert target["image_id"] == expected["image_id"]
    assert len(dm.test_set) == 5  # test defaults to val's files


def test_batches_follow_the_contract(coco: Path) -> None:
    dm = COCODataModule(data_dir=str(coco), batch_size=3, train_short_sides=[80], max_size=100,
                        eval_short_side=96, num_workers=0)  # fmt: skip
    dm.setup("fit")
    assert dm.test_set is None  # fit reads train and val only
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and len(images) == len(targets) == 3
    for image, target in zip(images, targets):
        assert type(image) is torch.Tensor and image.dtype == torch.float32
        assert image.shape == (3, 80, 80) and 0 <= image.min() and image.max() <= 1
        n = len(target["labels"])
        assert type(target["boxes"]) is torch.Tensor and target["boxes"].shape == (n, 4)
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, 80, 80)
        assert isinstance(target["image_id"], int) and "iscrowd" not in target
    val_images, val_targets = next(iter(dm.val_dataloader()))
    assert val_images[0].shape == (3, 96, 96) and val_targets[0]["iscrowd"].dtype == torch.int64


def test_sparse_category_ids_become_contiguous_labels(coco: Path) -> None:
    sparse = {d + 1: 3 * d + 5 for d in range(10)}  # ids 5, 8, ..., 32

    def respell(document: dict) -> None:
        # listed in reverse order, named after the digit: labels follow the ids, not the list
        document["categories"] = [
            {"id": sparse[c["id"]], "name": f"digit {c['name']}"} for c in document["categories"]
        ][::-1]
        for annotation in document["annotations"]:
            annotation["category_id"] = sparse[annotation["category_id"]]

    for split in ("train", "val"):
        _edit(coco, split, respell)
    dm = COCODataModule(data_dir=str(coco), **PLAIN)
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.class_names == [f"digit {d}" for d in range(10)]
    scenes = SceneDetectionDataModule(train_size=6, val_size=5, test_size=3, seed=7)
    scenes.setup()
    for index in range(5):
        assert torch.equal(dm.val_set[index][1]["labels"], scenes.val_set[index][1]["labels"])


def test_boxes_and_masks_follow_every_augmentation(coco: Path) -> None:
    # always flipped, shorter side 128 (the scenes are 64 x 64: everything doubles)
    dm = COCODataModule(data_dir=str(coco), train_short_sides=[128], max_size=200, hflip=1.0,
                        eval_short_side=96, num_workers=0)  # fmt: skip
    dm.setup("fit")
    plain = COCODataModule(data_dir=str(coco), **PLAIN)
    plain.setup("fit")
    for index in range(len(dm.train_set)):
        image, target = dm.train_set[index]
        original, before = plain.train_set[index]
        boxes = torch.as_tensor(before["boxes"]) * 2
        flipped = torch.stack([128 - boxes[:, 2], boxes[:, 1], 128 - boxes[:, 0], boxes[:, 3]], 1)
        assert torch.allclose(torch.as_tensor(target["boxes"]), flipped)
        masks = F.horizontal_flip(F.resize(Mask(before["masks"]), [128, 128]))
        assert torch.equal(torch.as_tensor(target["masks"]), torch.as_tensor(masks))
        assert image.shape == (3, 128, 128)
        pixels = (original * 255).round().to(torch.uint8)  # the pipeline resizes the uint8 image
        expected = F.to_dtype(F.horizontal_flip(F.resize(pixels, [128, 128])), scale=True)
        assert torch.equal(image, expected)
    image, target = dm.val_set[0]  # evaluation: resized, never flipped
    _, before = plain.val_set[0]
    assert image.shape == (3, 96, 96)
    assert torch.allclose(torch.as_tensor(target["boxes"]), torch.as_tensor(before["boxes"]) * 1.5)


def test_empty_images_and_crowd_annotations(coco: Path) -> None:
    def add_empty_and_crowd(document: dict) -> None:
        document["images"].append({"id": 99, "file_name": "empty.png", "height": 64, "width": 64})
        document["annotations"][0]["iscrowd"] = 1

    for split in ("train", "val"):
        shutil.copy(coco / f"{split}2017" / "000000000001.png", coco / f"{split}2017" / "empty.png")
        _edit(coco, split, add_empty_and_crowd)
    dm = COCODataModule(data_dir=str(coco), **PLAIN)
    dm.setup("fit")
    assert len(dm.train_set) == 6  # the empty image is not trained on
    _, images = dm.train_set[0], [dm.train_set[i][1]["image_id"] for i in range(6)]
    assert 99 not in images
    crowded = [t for t in (dm.val_set[i][1] for i in range(len(dm.val_set))) if t["image_id"] == 1]
    assert crowded[0]["iscrowd"][0] == 1  # evaluation keeps crowds, flagged
    with_empty = COCODataModule(data_dir=str(coco), skip_empty_train=False, batch_size=7, **PLAIN)
    with_empty.setup("fit")
    _, targets = next(iter(with_empty.train_dataloader()))
    empty = next(t for t in targets if t["image_id"] == 99)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["masks"].shape == (0, 64, 64)
    first = next(t for t in targets if t["image_id"] == 1)
    assert len(first["labels"]) == len(crowded[0]["labels"]) - 1  # the crowd is not a target
    _, val_targets = next(iter(with_empty.val_dataloader()))
    assert val_targets[-1]["image_id"] == 99 and val_targets[-1]["iscrowd"].shape == (0,)


def test_the_config_group_builds_the_module(compose_train, coco: Path) -> None:
    from hydra.utils import instantiate

    cfg = compose_train(["data=coco", f"data.data_dir={coco}", "data.num_workers=0"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, COCODataModule) and dm.num_classes == 10
    assert (dm.train_short_sides, dm.eval_short_side, dm.max_size) == ([800], 800, 1333)


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file or key, before any training


def test_missing_paths_are_named_by_their_key(coco: Path) -> None:
    (coco / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"data\.val_annotations: .*instances_val2017"):
        COCODataModule(data_dir=str(coco))
    with pytest.raises(FileNotFoundError, match=r"data\.train_images: .*nowhere"):
        COCODataModule(data_dir=str(coco), train_images="nowhere")
    with pytest.raises(FileNotFoundError, match=r"data\.data_dir="):
        COCODataModule(data_dir=str(coco / "absent"))


def test_malformed_json_names_the_file_line_and_column(coco: Path) -> None:
    path = coco / "annotations" / "instances_val2017.json"
    text = json.dumps(json.loads(path.read_text()), indent=1)
    broken = text.replace('"iscrowd": 0', '"iscrowd": 0,,', 1)  # a line in the middle
    path.write_text(broken)
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(broken)
    where = f"line {parsed.value.lineno} column {parsed.value.colno}"
    assert parsed.value.lineno > 3
    message = _raises(ValueError, COCODataModule(data_dir=str(coco), **PLAIN), str(path), where)
    assert "data.val_annotations" in message and "not valid JSON" in message


@pytest.mark.parametrize(
    ("document", "named"),
    [([1, 2], "'images'"), ({"images": [], "annotations": []}, "'categories'")],
)
def test_a_json_file_that_is_not_coco_names_the_missing_list(coco: Path, document, named) -> None:
    path = coco / "annotations" / "instances_train2017.json"
    path.write_text(json.dumps(document))
    dm = COCODataModule(data_dir=str(coco), **PLAIN)
    _raises(ValueError, dm, str(path), named, "not a COCO instances file")


def test_an_annotated_image_missing_on_disk_is_named(coco: Path) -> None:
    (coco / "train2017" / "000000000004.png").unlink()
    dm = COCODataModule(data_dir=str(coco), **PLAIN)
    message = _raises(FileNotFoundError, dm, "data.train_images", "000000000004.png",
                      "instances_train2017.json")  # fmt: skip
    assert "1 of its 6 images" in message


def test_a_category_id_outside_the_categories_is_named(coco: Path) -> None:
    def stray(document: dict) -> None:
        document["annotations"][2]["category_id"] = 42

    path = _edit(coco, "val", stray)
    message = _raises(ValueError, COCODataModule(data_dir=str(coco), **PLAIN), str(path))
    third = json.loads(path.read_text())["annotations"][2]
    assert f"annotation {third['id']} " in message and "category_id 42" in message
    assert f"{third['image_id']:012d}.png" in message and "1, 2, 3" in message


def test_num_classes_that_disagrees_with_the_file_is_named(coco: Path) -> None:
    dm = COCODataModule(data_dir=str(coco), num_classes=80, **PLAIN)
    message = _raises(ValueError, dm, "data.num_classes=80", "defines 10 categories")
    assert "instances_train2017.json" in message  # the first file read
    with pytest.raises(ValueError, match="data.num_classes=80"):
        _ = COCODataModule(data_dir=str(coco), num_classes=80).num_classes  # the attribute too
    agreed = COCODataModule(data_dir=str(coco), num_classes=10, **PLAIN)
    agreed.setup()
    assert agreed.num_classes == 10


def test_splits_with_different_categories_are_named(coco: Path) -> None:
    _edit(coco, "train", lambda d: d["categories"][0].update(name="zero"))
    message = _raises(ValueError, COCODataModule(data_dir=str(coco), **PLAIN), "differ")
    assert "instances_train2017.json" in message and "instances_val2017.json" in message


def test_a_box_without_area_names_image_and_annotation(coco: Path) -> None:
    def flatten(document: dict) -> None:
        document["annotations"][1]["bbox"][3] = 0

    path = _edit(coco, "train", flatten)
    second = json.loads(path.read_text())["annotations"][1]
    message = _raises(ValueError, COCODataModule(data_dir=str(coco), **PLAIN), str(path))
    assert f"annotation {second['id']} of image '{second['image_id']:012d}.png'" in message
    assert "height 0" in message and "data.invalid_boxes=drop" in message
    dropping = COCODataModule(data_dir=str(coco), invalid_boxes="drop", **PLAIN)
    dropping.setup("fit")
    kept = [dropping.train_set[i][1] for i in range(len(dropping.train_set))]
    assert (
        sum(len(t["labels"]) for t in kept) == len(json.loads(path.read_text())["annotations"]) - 1
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda a: a.pop("segmentation"), ["no 'segmentation'", "data.masks=false"]),
        (lambda a: a.update(image_id=1234), ["image id 1234", "'images' list"]),
        (lambda a: a.update(bbox=[1, 2, 3]), ["bbox [1, 2, 3]", "[x, y, width, height]"]),
    ],
)
def test_a_malformed_annotation_is_named(coco: Path, change, named: list[str]) -> None:
    path = _edit(coco, "val", lambda d: change(d["annotations"][0]))
    _raises(
        ValueError, COCODataModule(data_dir=str(coco), **PLAIN), str(path), "annotation 1", *named
    )


def test_boxes_only_needs_no_segmentation(coco: Path) -> None:
    for split in ("train", "val"):
        _edit(coco, split, lambda d: [a.pop("segmentation") for a in d["annotations"]])
    dm = COCODataModule(data_dir=str(coco), masks=False, **PLAIN)
    dm.setup("fit")
    _, targets = next(iter(dm.train_dataloader()))
    assert not dm.has_masks and "masks" not in targets[0] and len(targets[0]["boxes"])


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"invalid_boxes": "skip"}, "data.invalid_boxes"),
        ({"num_classes": 0}, "data.num_classes"),
        ({"hflip": 2}, "data.hflip"),
        ({"train_short_sides": [0]}, "data.train_short_sides"),
        ({"max_size": 700}, "data.max_size"),
    ],
)
def test_bad_keys_are_named(coco: Path, keys: dict, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        COCODataModule(data_dir=str(coco), **keys)


def test_the_run_path_reports_a_bad_annotation_file_in_one_line(compose_train, coco: Path) -> None:
    path = coco / "annotations" / "instances_train2017.json"
    path.write_text('{"images": [}')
    cfg = compose_train(["data=coco", f"data.data_dir={coco}", "data.num_workers=0"])
    with pytest.raises(SetupError) as error:
        build_run(cfg)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "line 1 column 13" in message


def test_polygon_and_uncompressed_rle_segmentations_decode(coco: Path) -> None:
    """Real COCO files hold polygons (objects) and uncompressed RLE (crowds), not only the
    compressed RLE the scene writer uses."""
    plain = COCODataModule(data_dir=str(coco), **PLAIN)
    plain.setup("validate")
    _, before = plain.val_set[0]
    original = torch.as_tensor(before["masks"][1]).bool()

    def respell(document: dict) -> None:
        first, second = document["annotations"][:2]
        x, y, w, h = first["bbox"]
        first["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        runs, value, count = [], False, 0  # column-major runs, starting with background
        for pixel in original.T.reshape(-1).tolist():
            if pixel != value:
                runs.append(count)
                value, count = pixel, 0
            count += 1
        second["segmentation"] = {"size": [64, 64], "counts": [*runs, count]}

    _edit(coco, "val", respell)
    dm = COCODataModule(data_dir=str(coco), **PLAIN)
    dm.setup("validate")
    _, target = dm.val_set[0]
    masks = torch.as_tensor(target["masks"]).bool()
    assert torch.equal(masks[1], original)
    x0, y0, x1, y1 = (int(v) for v in before["boxes"][0])
    rows, cols = masks[0].any(1).nonzero(), masks[0].any(0).nonzero()
    assert abs(int(rows.min()) - y0) <= 1 and abs(int(rows.max()) + 1 - y1) <= 1
    assert abs(int(cols.min()) - x0) <= 1 and abs(int(cols.max()) + 1 - x1) <= 1
    assert masks[0][y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].all()  # the polygon is filled
