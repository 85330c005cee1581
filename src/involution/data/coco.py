"""COCO-format detection and instance segmentation through torchvision's ``CocoDetection``,
wrapped for the v2 transforms so that boxes and masks follow every augmentation.

The usual layout (``train2017/``, ``val2017/``, ``annotations/instances_*.json``, each path a key,
relative to ``data_dir``). Category ids (sparse in COCO: 1..90 for 80 classes) become labels
1..num_classes in the order of their ids, class names from the file. Every annotation file is read
and checked before any training: valid JSON (the error's line and column), the COCO lists, each
annotation's image and category known, boxes of positive width and height, segmentations present
when masks are loaded, every annotated image on disk. The first problem stops the run with one line
naming the file and what is wrong.

Augmentation as mmdet's COCO configs: keep-ratio resize of the shorter side to one of
``train_short_sides`` (the longer at most ``max_size``), horizontal flip; evaluation resizes to
``eval_short_side``. Set the sizes to null to leave resizing to the detector. Crowd annotations are
left out of training (as mmdet and torchvision's references do) and kept, flagged in ``iscrowd``,
on the evaluation splits; images left without annotations are skipped in training
(``skip_empty_train``). COCO's test-dev labels are not public: the test split defaults to val.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2 as T

from involution.data.detection import DetectionDataModule

SPLITS = ("train", "val", "test")
_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: SPLITS,
}


def read_annotations(path: Path, key: str) -> dict[str, Any]:
    """The parsed file, or an error naming it: absent, not JSON (with line and column), or
    without COCO's three lists."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"data.{key}: annotation file {path} does not exist") from None
    except OSError as error:
        raise FileNotFoundError(f"data.{key}: cannot read {path} ({error.strerror})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"data.{key}: {path} is not valid JSON: {error.msg} at line {error.lineno} "
            f"column {error.colno}"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"data.{key}: {path} is not a JSON text file (not UTF-8)") from None
    lists = ("images", "annotations", "categories")
    for name in lists:
        if not isinstance(document, dict) or not isinstance(document.get(name), list):
            raise ValueError(
                f"data.{key}: {path} is not a COCO instances file: no {name!r} list "
                f"(it needs the lists {', '.join(map(repr, lists))})"
            )
    return document


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ids_text(ids: Sequence[int]) -> str:
    ids = sorted(ids)
    if len(ids) > 12:
        return f"{len(ids)} ids, {ids[0]}..{ids[-1]}"
    return ", ".join(map(str, ids))


def categories_of(document: dict[str, Any], path: Path, key: str) -> list[tuple[int, str]]:
    """(id, name) of each category, in id order."""
    categories = []
    for position, category in enumerate(document["categories"]):
        if not isinstance(category, dict) or not _integer(category.get("id")):
            raise ValueError(f"data.{key}: {path}: categories[{position}] has no integer 'id'")
        categories.append((category["id"], str(category.get("name", category["id"]))))
    ids = [id_ for id_, _ in categories]
    if not categories:
        raise ValueError(f"data.{key}: {path} defines no categories")
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"data.{key}: {path}: category ids {twice} appear more than once")
    return sorted(categories)


def check_annotations(
    document: dict[str, Any],
    path: Path,
    key: str,
    *,
    masks: bool,
    invalid_boxes: str,
) -> dict[str, Any]:
    """The document with every annotation checked; annotations with a non-positive box side
    dropped (``invalid_boxes="drop"``) or reported (``"error"``)."""
    images: dict[int, str] = {}
    for position, image in enumerate(document["images"]):
        if not isinstance(image, dict) or not _integer(image.get("id")):
            raise ValueError(f"data.{key}: {path}: images[{position}] has no integer 'id'")
        if not isinstance(image.get("file_name"), str):
            raise ValueError(f"data.{key}: {path}: image {image['id']} has no 'file_name'")
        if image["id"] in images:
            raise ValueError(f"data.{key}: {path}: image id {image['id']} appears more than once")
        images[image["id"]] = image["file_name"]
    category_ids = {id_ for id_, _ in categories_of(document, path, key)}
    kept = []
    for position, annotation in enumerate(document["annotations"]):
        if not isinstance(annotation, dict) or "id" not in annotation:
            raise ValueError(f"data.{key}: {path}: annotations[{position}] has no 'id'")
        name = f"annotation {annotation['id']}"
        image_id = annotation.get("image_id")
        if image_id not in images:
            raise ValueError(
                f"data.{key}: {path}: {name} refers to image id {image_id!r}, which is not in "
                "its 'images' list"
            )
        where = f"{name} of image {images[image_id]!r}"
        category = annotation.get("category_id")
        if category not in category_ids:
            raise ValueError(
                f"data.{key}: {path}: {where} has category_id {category!r}, not one of the "
                f"file's categories (ids {_ids_text(list(category_ids))})"
            )
        box = annotation.get("bbox")
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) and math.isfinite(v) for v in box)
        ):
            raise ValueError(
                f"data.{key}: {path}: {where} has bbox {box!r}; COCO boxes are "
                "[x, y, width, height], four finite numbers"
            )
        if box[2] <= 0 or box[3] <= 0:
            if invalid_boxes == "drop":
                continue
            raise ValueError(
                f"data.{key}: {path}: {where} has a box of width {box[2]} and height {box[3]}; "
                "both must be positive (data.invalid_boxes=drop leaves such annotations out)"
            )
        if masks and not isinstance(annotation.get("segmentation"), list | dict):
            raise ValueError(
                f"data.{key}: {path}: {where} has no 'segmentation' (polygons or RLE); "
                "set data.masks=false to train boxes only"
            )
        kept.append(annotation)
    return {**document, "annotations": kept}


def check_images_exist(root: Path, file_names: list[str], key: str, annotations: Path) -> None:
    """FileNotFoundError naming the first annotated image absent from ``root`` (one directory
    listing per folder, not one stat per file)."""
    listings: dict[str, set[str]] = {}
    missing = []
    for file_name in file_names:
        folder, name = os.path.split(file_name)
        if folder not in listings:
            directory = root / folder
            listings[folder] = set(os.listdir(directory)) if directory.is_dir() else set()
        if name not in listings[folder]:
            missing.append(file_name)
    if missing:
        raise FileNotFoundError(
            f"data.{key}: image {root / missing[0]} named in {annotations} is missing "
            f"({len(missing)} of its {len(file_names)} images are)"
        )


class IndexedCocoDetection(datasets.CocoDetection):
    """torchvision's CocoDetection over an index built in memory from a checked document (the
    annotation file is read once, pycocotools prints nothing) and over chosen image ids."""

    def __init__(
        self, root: Path, document: dict[str, Any], ids: list[int], transforms: Any
    ) -> None:
        from pycocotools.coco import COCO

        datasets.VisionDataset.__init__(self, str(root), transforms=transforms)
        self.coco = COCO()
        self.coco.dataset = document
        with contextlib.redirect_stdout(io.StringIO()):  # "creating index... index created!"
            self.coco.createIndex()
        self.ids = ids


class CocoTargets:
    """The v2 wrapper's target made ours: float boxes, category ids -> labels 1..K, empty tensors
    for an image without annotations (the wrapper gives it only ``image_id``), ``iscrowd`` as a
    tensor."""

    def __init__(self, label_of: dict[int, int], masks: bool, crowd: bool) -> None:
        self.label_of, self.masks, self.crowd = label_of, masks, crowd

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if "boxes" not in target:
            height, width = image.height, image.width
            target = {
                "image_id": target["image_id"],
                "boxes": tv_tensors.BoundingBoxes(
                    torch.zeros(0, 4), format="XYXY", canvas_size=(height, width)
                ),
                "labels": torch.zeros(0, dtype=torch.int64),
                "iscrowd": [],
                **(
                    {"masks": tv_tensors.Mask(torch.zeros(0, height, width, dtype=torch.uint8))}
                    if self.masks
                    else {}
                ),
            }
        # float before any resize: a file of integer boxes would give int64 ones, which resizing
        # truncates
        target["boxes"] = tv_tensors.wrap(target["boxes"].float(), like=target["boxes"])
        labels = [self.label_of[category] for category in target["labels"].tolist()]
        target["labels"] = torch.tensor(labels, dtype=torch.int64)
        if self.crowd:
            target["iscrowd"] = torch.as_tensor(target["iscrowd"], dtype=torch.int64)
        return image, target


def _sizes(key: str, value: Any) -> list[int] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, int) else list(value)
    if not values or not all(_integer(v) and v > 0 for v in values):
        raise ValueError(f"data.{key} must be positive ints (or null: no resize), got {value!r}")
    return values


class COCODataModule(DetectionDataModule):
    """COCO-format detection (``masks=false``) or instance segmentation. Paths are keys, relative
    to ``data_dir`` unless absolute; ``test_images`` / ``test_annotations`` default to val's.
    ``num_classes``: null (from the file) or the count the file must define."""

    def __init__(
        self,
        data_dir: str = "data/coco",
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str = "annotations/instances_val2017.json",
        test_images: str | None = None,
        test_annotations: str | None = None,
        masks: bool = True,
        num_classes: int | None = None,
        invalid_boxes: str = "error",
        skip_empty_train: bool = True,
        train_short_sides: Sequence[int] | None = (800,),
        eval_short_side: int | None = 800,
        max_size: int = 1333,
        hflip: float = 0.5,
        batch_size: int = 2,
        num_workers: int = 2,
        pin_memory: bool = False,
        seed: int = 42,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        self.data_dir, self.seed = Path(data_dir), seed
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"data.data_dir={str(data_dir)!r} does not exist")
        given = {
            "train": (train_images, train_annotations),
            "val": (val_images, val_annotations),
            "test": (test_images or val_images, test_annotations or val_annotations),
        }
        self.paths: dict[str, tuple[Path, Path]] = {}
        for split, (images, annotation_file) in given.items():
            images_path = self.data_dir / images
            annotations_path = self.data_dir / annotation_file
            if not images_path.is_dir():
                raise FileNotFoundError(
                    f"data.{split}_images: image folder {images_path} does not exist"
                )
            if not annotations_path.is_file():
                raise FileNotFoundError(
                    f"data.{split}_annotations: annotation file {annotations_path} does not exist"
                )
            self.paths[split] = (images_path, annotations_path)
        if num_classes is not None and not (_integer(num_classes) and num_classes > 0):
            raise ValueError(
                f"data.num_classes must be a positive int or null, got {num_classes!r}"
            )
        if invalid_boxes not in ("error", "drop"):
            raise ValueError(f"data.invalid_boxes must be 'error' or 'drop', got {invalid_boxes!r}")
        if not 0 <= hflip <= 1:
            raise ValueError(f"data.hflip must be a probability in [0, 1], got {hflip!r}")
        self.train_short_sides = _sizes("train_short_sides", train_short_sides)
        eval_sides = _sizes("eval_short_side", eval_short_side)
        self.eval_short_side = eval_sides[0] if eval_sides else None
        resized = (self.train_short_sides or []) + (eval_sides or [])
        if resized and not (_integer(max_size) and max_size > max(resized)):
            raise ValueError(
                f"data.max_size must be an int above every short side ({max(resized)}), "
                f"got {max_size!r}"
            )
        self.max_size, self.hflip = max_size, hflip
        self.has_masks, self.expected_classes = bool(masks), num_classes
        self.invalid_boxes, self.skip_empty_train = invalid_boxes, skip_empty_train
        self.image_size = (self.eval_short_side, max_size) if self.eval_short_side else None
        self._documents: dict[Path, dict[str, Any]] = {}
        self._categories: tuple[Path, list[tuple[int, str]]] | None = None

    # -- categories -------------------------------------------------------------------------

    def _document(self, split: str) -> dict[str, Any]:
        """The split's annotation file, read and checked once; its categories must be those of
        every other file read, and number ``num_classes`` when that key is set."""
        path = self.paths[split][1]
        if path not in self._documents:
            key = f"{split}_annotations"
            document = read_annotations(path, key)
            categories = categories_of(document, path, key)
            if self._categories is None:
                if self.expected_classes is not None and len(categories) != self.expected_classes:
                    ids = _ids_text([i for i, _ in categories])
                    raise ValueError(
                        f"data.num_classes={self.expected_classes} but {path} defines "
                        f"{len(categories)} categories (ids {ids}); "
                        f"set data.num_classes={len(categories)} or null"
                    )
                self._categories = (path, categories)
            elif categories != self._categories[1]:
                raise ValueError(
                    f"data.{key}: the categories of {path} differ from those of "
                    f"{self._categories[0]} (ids and names must be the same in every split)"
                )
            self._documents[path] = check_annotations(
                document, path, key, masks=self.has_masks, invalid_boxes=self.invalid_boxes
            )
        return self._documents[path]

    def _category_list(self) -> list[tuple[int, str]]:
        if self._categories is None:
            self._document("val")  # usually the smallest file, needed by every stage
        assert self._categories is not None
        return self._categories[1]

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Foreground categories (detectors take num_classes + 1, 0 being background)."""
        return len(self._category_list())

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        return [name for _, name in self._category_list()]

    # -- data sets --------------------------------------------------------------------------

    def _transforms(self, train: bool) -> T.Compose:
        label_of = {id_: label for label, (id_, _) in enumerate(self._category_list(), start=1)}
        steps: list[Any] = [CocoTargets(label_of, self.has_masks, crowd=not train), T.ToImage()]
        if train:
            if self.train_short_sides:
                steps.append(T.RandomShortestSize(self.train_short_sides, self.max_size))
            steps.append(T.RandomHorizontalFlip(self.hflip))
        elif self.eval_short_side:
            steps.append(T.Resize(self.eval_short_side, max_size=self.max_size))
        steps += [T.ToDtype(torch.float32, scale=True), T.ClampBoundingBoxes()]
        if train:  # boxes a resize made thinner than a pixel: left out, as mmdet's do
            steps.append(T.SanitizeBoundingBoxes())
        return T.Compose(steps)

    def _build(self, split: str) -> Dataset:
        document = self._document(split)
        images_dir, annotation_file = self.paths[split]
        train = split == "train"
        if train:  # crowd regions are not objects to learn; evaluation ignores them instead
            document = {
                **document,
                "annotations": [a for a in document["annotations"] if not a.get("iscrowd", 0)],
            }
        ids = sorted(image["id"] for image in document["images"])
        if train and self.skip_empty_train:
            annotated = {a["image_id"] for a in document["annotations"]}
            ids = [i for i in ids if i in annotated]
        if not ids:
            raise ValueError(
                f"data.{split}_annotations: {annotation_file} leaves no {split} images"
            )
        file_of = {image["id"]: image["file_name"] for image in document["images"]}
        check_images_exist(
            images_dir, [file_of[i] for i in ids], f"{split}_images", annotation_file
        )
        keys = {"image_id", "boxes", "labels"} | ({"masks"} if self.has_masks else set())
        dataset = IndexedCocoDetection(images_dir, document, ids, self._transforms(train))
        return datasets.wrap_dataset_for_transforms_v2(
            dataset, target_keys=keys if train else keys | {"iscrowd"}
        )

    def setup(self, stage: str | None = None) -> None:
        for split in _STAGE_SPLITS.get(stage, SPLITS):
            if getattr(self, f"{split}_set") is None:
                setattr(self, f"{split}_set", self._build(split))
