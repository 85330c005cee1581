"""The digit scenes written to disk as real data sets: COCO (detection, instance segmentation) and
the Cityscapes layout (semantic segmentation), read back by the COCO and Cityscapes data modules.

The training split is written as the scenes of the first draw (index-determined), val and test
exactly as the scene data modules give them. Images are PNG, so pixels round-trip exactly; COCO
masks are compressed RLE (what pycocotools decodes back bit for bit, through torchvision's v2
wrapper); Cityscapes labels are ``*_gtFine_labelIds.png`` with each scene class written as the
label id whose train id equals it (background -> road, digit d -> train id d + 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from involution.data.cityscapes import LABEL_ID_OF_TRAIN_ID
from involution.data.scenes import DIGIT_NAMES, SceneConfig, scene_sets

DEFAULT_SIZES = {"train": 4000, "val": 500, "test": 500}


def _sets(sizes: dict[str, int] | None, seed: int, scene: dict[str, Any]) -> dict[str, Any]:
    return scene_sets(SceneConfig(**scene), sizes or DEFAULT_SIZES, seed=seed)


def write_coco(
    directory: str | Path, *, sizes: dict[str, int] | None = None, seed: int = 42, **scene: Any
) -> Path:
    """Write the scenes as COCO: <dir>/{train,val,test}2017/*.png, annotations/instances_*.json.

    Category ids 1..10 for digits 0..9; one annotation per digit (bbox, area, RLE segmentation,
    iscrowd 0). ``scene``: :class:`SceneConfig` keys. Returns the directory.
    """
    root = Path(directory)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [
        {"id": digit + 1, "name": name, "supercategory": "digit"}
        for digit, name in enumerate(DIGIT_NAMES)
    ]
    for split, scenes in _sets(sizes, seed, scene).items():
        folder = root / f"{split}2017"
        folder.mkdir(exist_ok=True)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for index in range(len(scenes)):
            drawn = scenes.scene(index)
            height, width = drawn.image.shape[:2]
            name = f"{index + 1:012d}.png"
            Image.fromarray(drawn.image).save(folder / name)
            images.append({"id": index + 1, "file_name": name, "height": height, "width": width})
            for box, digit, mask in zip(drawn.boxes, drawn.digits, drawn.masks):
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                x0, y0, x1, y1 = (int(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index + 1,
                        "category_id": int(digit) + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": int(mask.sum()),
                        "iscrowd": 0,
                        "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                    }
                )
        document = {
            "info": {"description": f"involution digit scenes, seed {seed}, split {split}"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(document))
    return root


def write_cityscapes(
    directory: str | Path, *, sizes: dict[str, int] | None = None, seed: int = 42, **scene: Any
) -> Path:
    """Write the scenes in the Cityscapes layout: leftImg8bit/<split>/scenes/*_leftImg8bit.png and
    gtFine/<split>/scenes/*_gtFine_labelIds.png. ``scene``: :class:`SceneConfig` keys. Returns the
    directory."""
    root = Path(directory)
    label_ids = np.asarray(LABEL_ID_OF_TRAIN_ID[:11], np.uint8)  # scene class -> label id
    for split, scenes in _sets(sizes, seed, scene).items():
        images = root / "leftImg8bit" / split / "scenes"
        labels = root / "gtFine" / split / "scenes"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for index in range(len(scenes)):
            drawn = scenes.scene(index)
            stem = f"scenes_{index:06d}_000019"
            Image.fromarray(drawn.image).save(images / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids[drawn.semantic]).save(labels / f"{stem}_gtFine_labelIds.png")
    return root
