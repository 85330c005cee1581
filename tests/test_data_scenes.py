"""The digit scenes: deterministic, self-consistent annotations, disjoint scan pools, the batch
contract of the detection and segmentation modules, and the keys' errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from sklearn.datasets import load_digits

from involution.data import SceneDetectionDataModule, SceneSegmentationDataModule
from involution.data.base import SeededItems
from involution.data.digits import split_indices
from involution.data.scenes import SceneConfig, compose_scene, digit_pools

SMALL = {"train_size": 12, "val_size": 6, "test_size": 4, "batch_size": 4}


def test_scenes_are_a_function_of_seed_split_and_index() -> None:
    first, again, other = (SceneDetectionDataModule(seed=seed, **SMALL) for seed in (3, 3, 4))
    for dm in (first, again, other):
        dm.setup()
    same = [first.val_set.scene(i) for i in range(4)], [again.val_set.scene(i) for i in range(4)]
    for a, b in zip(*same):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(first.val_set.scene(0).image, other.val_set.scene(0).image)
    assert not np.array_equal(first.val_set.scene(0).image, first.test_set.scene(0).image)


def test_splits_draw_from_disjoint_stratified_scan_pools() -> None:
    data = load_digits()
    indices = split_indices(data.target, 0.15, 0.15, seed=5)
    assert not set(indices[0]) & set(indices[1]) and not set(indices[1]) & set(indices[2])
    assert not set(indices[0]) & set(indices[2])
    pools = digit_pools(0.15, 0.15, seed=5)
    for (scans, digits), index in zip(pools.values(), indices):
        assert np.array_equal(scans, data.images[index] / 16.0)
        assert np.array_equal(digits, data.target[index])
        assert set(digits.tolist()) == set(range(10))  # every digit in every pool


def test_scene_annotations_agree_with_the_pixels() -> None:
    config = SceneConfig(canvas_size=48, max_digits=5, min_digit_size=10, max_digit_size=24,
                         max_overlap=0.3)  # fmt: skip
    pools = digit_pools(0.15, 0.15, seed=0)
    scans, digits = pools["train"]
    counts, overlapping = [], 0
    for index in range(60):
        scene = compose_scene(np.random.default_rng([1, index]), scans, digits, config)
        n = len(scene.digits)
        counts.append(n)
        assert scene.image.shape == (48, 48, 3) and scene.image.dtype == np.uint8
        assert scene.boxes.shape == (n, 4) and scene.masks.shape == (n, 48, 48)
        assert scene.digits.min(initial=0) >= 0 and scene.digits.max(initial=0) <= 9
        # masks are disjoint, each non-empty, and their union labelled digit + 1 is the semantic
        assert scene.masks.sum(0).max(initial=0) <= 1 and scene.masks.any(axis=(1, 2)).all()
        semantic = (scene.masks * (scene.digits + 1)[:, None, None]).sum(0)
        assert np.array_equal(semantic, scene.semantic)
        for box, mask in zip(scene.boxes, scene.masks):  # tight: pixel edges of the mask
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        if n > 1:
            boxes = torch.from_numpy(scene.boxes)
            inter = (
                (
                    torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
                    - torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
                )
                .clamp(min=0)
                .prod(-1)
            )
            overlapping += int((inter.triu(1) > 0).any())
        # digits are lighter than the dark background
        if n:
            lit = scene.image[scene.semantic > 0].mean()
            assert lit > scene.image[scene.semantic == 0].mean() + 60
    assert min(counts) >= 1 and max(counts) == 5
    assert overlapping > 0, "overlap is allowed up to max_overlap, and happens"


def test_fresh_training_scenes_follow_the_item_seed() -> None:
    dm = SceneDetectionDataModule(**SMALL)
    dm.setup()
    items = SeededItems(dm.train_set)

    def image(item: tuple[int, int]) -> torch.Tensor:
        return items[item][0]

    assert torch.equal(image((2, 11)), image((2, 11)))  # same epoch seed: same scene
    assert not torch.equal(image((2, 11)), image((2, 12)))  # another epoch: a new scene
    torch.manual_seed(0)
    first = dm.val_set[1][0]
    torch.manual_seed(1)
    assert torch.equal(first, dm.val_set[1][0])  # evaluation scenes never change
    fixed = SceneDetectionDataModule(fresh_train_scenes=False, **SMALL)
    fixed.setup()
    assert torch.equal(SeededItems(fixed.train_set)[(2, 11)][0], fixed.train_set[2][0])


def test_detection_batches_follow_the_contract() -> None:
    dm = SceneDetectionDataModule(**SMALL)
    assert (dm.num_classes, dm.in_channels, dm.has_masks, dm.batch_size) == (10, 3, True, 4)
    assert dm.class_names == [str(d) for d in range(10)] and dm.image_size == (64, 64)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 4
    for image, target in zip(images, targets):
        assert type(image) is torch.Tensor and image.dtype == torch.float32
        assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
        n = len(target["labels"])
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
        assert target["labels"].dtype == torch.int64 and 1 <= target["labels"].min()
        assert target["labels"].max() <= 10
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, 64, 64)
        assert isinstance(target["image_id"], int)
    _, val_targets = next(iter(dm.val_dataloader()))
    assert [t["image_id"] for t in val_targets] == [1, 2, 3, 4]
    assert all(t["iscrowd"].tolist() == [0] * len(t["labels"]) for t in val_targets)
    boxes_only = SceneDetectionDataModule(masks=False, **SMALL)
    boxes_only.setup()
    _, targets = next(iter(boxes_only.val_dataloader()))
    assert not boxes_only.has_masks and "masks" not in targets[0]


def test_segmentation_batches_follow_the_contract() -> None:
    dm = SceneSegmentationDataModule(canvas_size=40, max_digit_size=20, **SMALL)
    assert (dm.num_classes, dm.ignore_index, dm.in_channels) == (11, 255, 3)
    assert dm.class_names[0] == "background" and len(dm.class_names) == 11
    dm.setup()
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 40, 40) and images.dtype == torch.float32
    assert masks.shape == (4, 40, 40) and masks.dtype == torch.int64
    assert 0 <= masks.min() and masks.max() <= 10 and masks.max() > 0
    # the same scene as the detection module's: its semantic mask
    detection = SceneDetectionDataModule(canvas_size=40, max_digit_size=20, **SMALL)
    detection.setup()
    image, target = detection.val_set[0]
    seg_image, seg_mask = dm.val_set[0]
    assert torch.equal(image, seg_image)
    union = (target["masks"].long() * target["labels"][:, None, None]).sum(0)
    assert torch.equal(union, seg_mask)


def test_the_config_groups_build_the_modules(compose_train) -> None:
    for option, cls in (
        ("scenes_detection", SceneDetectionDataModule),
        ("scenes_segmentation", SceneSegmentationDataModule),
    ):
        dm = instantiate(compose_train([f"data={option}"]).data)
        assert type(dm) is cls
        assert dm.config == SceneConfig() and dm.sizes == {"train": 4000, "val": 500, "test": 500}


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"canvas_size": 0}, "data.canvas_size"),
        ({"min_digits": 3, "max_digits": 2}, "data.min_digits=3 must be <= data.max_digits=2"),
        ({"max_digit_size": 80}, "data.max_digit_size=80 must be <= data.canvas_size=64"),
        ({"max_overlap": 1.5}, "data.max_overlap"),
        ({"mask_threshold": -0.1}, "data.mask_threshold"),
        ({"train_size": 0}, "data.train_size"),
        ({"seed": -1}, "data.seed"),
        ({"val_fraction": 0.7}, "data.val_fraction"),
        ({"batch_size": 0}, "data.batch_size"),
    ],
)
def test_bad_scene_keys_name_the_key(keys: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        SceneDetectionDataModule(**keys)


def test_an_unknown_scene_key_is_named() -> None:
    with pytest.raises(TypeError, match="canvas_sise"):
        SceneSegmentationDataModule(canvas_sise=32)
