"""Cityscapes semantic segmentation (fine labels) through torchvision's ``Cityscapes``, with the
training pipeline of mmseg's Cityscapes configs as v2 transforms on image and mask together.

Label ids become the 19 train ids (everything else 255, ignored). Training: keep-ratio resize to
``scale`` times a ratio drawn from ``ratio_range`` (mmseg's ``Resize(img_scale, ratio_range)``),
a ``crop_size`` crop drawn up to 10 times until no class covers ``cat_max_ratio`` of it (mmseg's
``RandomCrop(cat_max_ratio)``), padded with 0 / 255 where the image is smaller, a horizontal flip
and, with ``photometric``, brightness / contrast / saturation / hue jitter each applied with
probability 0.5 (mmseg's ``PhotoMetricDistortion``; its brightness shift is additive, this one
multiplies). Evaluation: the keep-ratio resize to ``scale`` alone (whole 2048 x 1024 images as
they are). Cityscapes' test labels are not public, so ``test_split: val`` (mmseg's choice too).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2 as T

from involution.data.segmentation import IGNORE_INDEX, SegmentationDataModule

_TRAIN_CLASSES = sorted(
    (c for c in datasets.Cityscapes.classes if 0 <= c.train_id < IGNORE_INDEX),
    key=lambda c: c.train_id,
)
CLASS_NAMES = [c.name for c in _TRAIN_CLASSES]
# the label id of each train id (the writer of Cityscapes-layout files uses it backwards)
LABEL_ID_OF_TRAIN_ID = [c.id for c in _TRAIN_CLASSES]
# label id -> train id (255 for the classes Cityscapes does not evaluate, and for unused ids)
TRAIN_ID_OF_LABEL_ID = torch.full((256,), IGNORE_INDEX, dtype=torch.uint8)
for _class in _TRAIN_CLASSES:
    TRAIN_ID_OF_LABEL_ID[_class.id] = _class.train_id

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


class TrainIds(T.Transform):
    """Masks of Cityscapes label ids -> train ids (0..18, 255 ignored); images pass unchanged."""

    _transformed_types = (tv_tensors.Mask,)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(TRAIN_ID_OF_LABEL_ID[inpt.long()], like=inpt)


class CategoryBalancedCrop(T.RandomCrop):
    """mmseg's ``RandomCrop(cat_max_ratio)``: the crop window is drawn again (up to 10 windows in
    all) while one class covers ``cat_max_ratio`` or more of its labelled pixels."""

    def __init__(
        self, size: tuple[int, int], cat_max_ratio: float, ignore_index: int, **kwargs: Any
    ) -> None:
        super().__init__(size, **kwargs)
        self.cat_max_ratio, self.ignore_index = cat_max_ratio, ignore_index

    def _balanced(self, mask: torch.Tensor, params: dict[str, Any]) -> bool:
        left, top = params["padding"][:2]
        y0, x0 = max(params["top"] - top, 0), max(params["left"] - left, 0)
        y1 = params["top"] - top + params["height"]
        x1 = params["left"] - left + params["width"]
        counts = torch.bincount(mask[..., y0:y1, x0:x1].reshape(-1).long(), minlength=256)
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max().item() < self.cat_max_ratio * counts.sum().item()

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        params = super().make_params(flat_inputs)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        if mask is None or self.cat_max_ratio >= 1:
            return params
        for _ in range(9):
            if self._balanced(mask, params):
                break
            params = super().make_params(flat_inputs)
        return params


def _pair(key: str, value: Any, kind: type) -> tuple[Any, Any]:
    try:
        pair = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"data.{key} must be two positive numbers, got {value!r}")
    return pair  # type: ignore[return-value]


class CityscapesDataModule(SegmentationDataModule):
    """``data_dir`` holds ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` for train and val (and test with
    ``test_split: test``). ``scale`` is (width, height) and ``crop_size`` (height, width), as in
    mmseg's configs."""

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(
        self,
        data_dir: str = "data/cityscapes",
        scale: tuple[int, int] = (2048, 1024),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        crop_size: tuple[int, int] = (512, 1024),
        cat_max_ratio: float = 0.75,
        hflip: float = 0.5,
        photometric: bool = True,
        test_split: str = "val",
        batch_size: int = 2,
        num_workers: int = 2,
        pin_memory: bool = False,
        seed: int = 42,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        self.data_dir, self.seed = Path(data_dir), seed
        width, height = _pair("scale", scale, int)
        ratio_range = _pair("ratio_range", ratio_range, float)
        if ratio_range[0] > ratio_range[1]:
            raise ValueError(
                f"data.ratio_range must be (low, high) with low <= high, got {ratio_range}"
            )
        self.image_size = _pair("crop_size", crop_size, int)
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"data.cat_max_ratio must be in (0, 1], got {cat_max_ratio!r}")
        if not 0 <= hflip <= 1:
            raise ValueError(f"data.hflip must be a probability in [0, 1], got {hflip!r}")
        if test_split not in ("val", "test"):
            raise ValueError(f"data.test_split must be 'val' or 'test', got {test_split!r}")
        self.test_split = test_split
        self.splits = ("train", "val") if test_split == "val" else ("train", "val", "test")
        check_layout(self.data_dir, self.splits)
        target = (height, width)
        jitter = [
            T.RandomApply([T.ColorJitter(**{key: value})], p=0.5)
            for key, value in (
                ("brightness", 32 / 255),
                ("contrast", 0.5),
                ("saturation", 0.5),
                ("hue", 18 / 180),  # mmseg's 18 on OpenCV's 0..180 hue circle
            )
        ]
        self.train_transform = T.Compose(
            [
                T.ToImage(),
                TrainIds(),
                T.ScaleJitter(target, scale_range=ratio_range),
                CategoryBalancedCrop(
                    self.image_size,
                    cat_max_ratio,
                    IGNORE_INDEX,
                    pad_if_needed=True,
                    fill={tv_tensors.Mask: IGNORE_INDEX, "others": 0},
                ),
                T.RandomHorizontalFlip(hflip),
                *(jitter if photometric else []),
                T.ToDtype(torch.float32, scale=True),
            ]
        )
        self.eval_transform = T.Compose(
            [
                T.ToImage(),
                TrainIds(),
                T.ScaleJitter(target, scale_range=(1.0, 1.0)),  # keep-ratio fit into `scale`
                T.ToDtype(torch.float32, scale=True),
            ]
        )

    def _split(self, split: str, transforms: T.Compose) -> datasets.VisionDataset:
        check_labels(self.data_dir, split)
        dataset = datasets.Cityscapes(
            str(self.data_dir),
            split=split,
            mode="fine",
            target_type="semantic",
            transforms=transforms,
        )
        return datasets.wrap_dataset_for_transforms_v2(dataset)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = self._split("train", self.train_transform)
        self.val_set = self._split("val", self.eval_transform)
        self.test_set = (
            self.val_set if self.test_split == "val" else self._split("test", self.eval_transform)
        )


def check_layout(root: Path, splits: tuple[str, ...]) -> None:
    """FileNotFoundError naming each split folder of the Cityscapes layout that ``root`` lacks."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.data_dir={str(root)!r} does not exist (a Cityscapes folder)")
    needed = [f"{top}/{split}" for split in splits for top in ("leftImg8bit", "gtFine")]
    missing = [path for path in needed if not (root / path).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"data.data_dir={str(root)!r} is not a Cityscapes folder: no {', '.join(missing)} "
            f"(it needs {', '.join(needed)}, each with one folder per city)"
        )


def check_labels(root: Path, split: str) -> None:
    """Every image of the split is a ``*_leftImg8bit.png`` in a city folder and has its fine label
    file; else FileNotFoundError / ValueError naming the first offender (and how many there are)."""
    images_dir = root / "leftImg8bit" / split
    missing: list[str] = []
    count = 0
    for city in sorted(os.listdir(images_dir)):
        if not (images_dir / city).is_dir():
            raise ValueError(
                f"data.data_dir={str(root)!r}: leftImg8bit/{split}/{city} is not a city folder "
                "(leftImg8bit/<split> may hold only folders, one per city)"
            )
        label_dir = root / "gtFine" / split / city
        labels = set(os.listdir(label_dir)) if label_dir.is_dir() else set()
        for name in sorted(os.listdir(images_dir / city)):
            if not name.endswith(IMAGE_SUFFIX):
                raise ValueError(
                    f"data.data_dir={str(root)!r}: leftImg8bit/{split}/{city}/{name} is not a "
                    f"*{IMAGE_SUFFIX} image (a city folder may hold only those)"
                )
            count += 1
            label = name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX
            if label not in labels:
                missing.append(f"gtFine/{split}/{city}/{label}")
    if count == 0:
        raise FileNotFoundError(
            f"data.data_dir={str(root)!r}: leftImg8bit/{split} holds no images "
            f"(expected <city>/*{IMAGE_SUFFIX})"
        )
    if missing:
        raise FileNotFoundError(
            f"data.data_dir={str(root)!r}: {missing[0]} is missing "
            f"({len(missing)} of the {count} {split} images have no fine label file)"
        )
