"""The digit scenes written to disk as real data sets: COCO (detection, instance segmentation) and
the Cityscapes layout (semantic segmentation), read back by the COCO and Cityscapes data modules.

The training split is written as the scenes of the first draw (index-determined), val and test
exactly as the scene data modules give them. Images are PNG, so pixels round-trip exactly; COCO
masks are compressed RLE (what pycocotools decodes back bit for bit, through torchvision's v2
wrapper); Cityscapes labels are ``*_gtFine_labelIds.png`` with each scene class written as the
label id whose train id equals it (background -> road, digit d -> train id d + 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from involution.data.cityscapes import LABEL_ID_OF_TRAIN_ID
from involution.data.scenes import DIGIT_NAMES, SPLITS, SceneConfig, scene_sets

DEFAULT_SIZES = {"train": 4000, "val": 500, "test": 500}


def _sets(sizes: dict[str, int] | None, seed: int, scene: dict[str, Any]) -> dict[str, Any]:
    return scene_sets(SceneConfig(**scene), sizes or DEFAULT_SIZES, seed=seed)


def write_coco(
    directory: str | Path, *, sizes: dict[str, int] | None = None, seed: int = 42, **scene: Any
) -> Path:
    """Write the digit scenes as a COCO data set that ``COCODataModule`` (torchvision's
    CocoDetection) reads back exactly.

    Layout: ``<directory>/{train,val,test}2017/<id>.png`` and
    ``annotations/instances_{train,val,test}2017.json``; category ids 1..10 for digits 0..9, one
    annotation per digit (bbox, area, compressed-RLE segmentation, iscrowd 0). Also
    ``python -m involution.data.scene_files write-coco DIR``.

    Args:
        directory: where to write (created if needed; files of the same names are replaced).
        sizes: scenes per split, ``{"train": n, "val": n, "test": n}`` (default 4000 / 500 / 500).
        seed: the scenes' seed (the scene data modules' ``seed``).
        **scene: :class:`SceneConfig` keys (``canvas_size``, ``max_digits``, ...).

    Returns:
        The directory, as a ``Path``.

    Raises:
        ValueError: a bad scene key (named as ``data.<key>``).
        OSError: the directory cannot be written.

    Example:
        >>> import json, tempfile
        >>> root = write_coco(tempfile.mkdtemp(), sizes={"train": 2, "val": 1, "test": 1})
        >>> document = json.loads((root / "annotations/instances_val2017.json").read_text())
        >>> document["images"][0]["file_name"], len(document["categories"])
        ('000000000001.png', 10)
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
    """Write the digit scenes in the Cityscapes layout that ``CityscapesDataModule``
    (torchvision's Cityscapes) reads back exactly.

    Layout: ``<directory>/leftImg8bit/<split>/scenes/*_leftImg8bit.png`` and
    ``gtFine/<split>/scenes/*_gtFine_labelIds.png`` for train, val and test; each scene class is
    written as the label id whose train id equals it (background -> road, digit d -> train id
    d + 1). Also ``python -m involution.data.scene_files write-cityscapes DIR``.

    Args:
        directory: where to write (created if needed; files of the same names are replaced).
        sizes: scenes per split, ``{"train": n, "val": n, "test": n}`` (default 4000 / 500 / 500).
        seed: the scenes' seed (the scene data modules' ``seed``).
        **scene: :class:`SceneConfig` keys (``canvas_size``, ``max_digits``, ...).

    Returns:
        The directory, as a ``Path``.

    Raises:
        ValueError: a bad scene key (named as ``data.<key>``).
        OSError: the directory cannot be written.

    Example:
        >>> import tempfile
        >>> root = write_cityscapes(tempfile.mkdtemp(), sizes={"train": 2, "val": 1, "test": 1})
        >>> sorted(p.name for p in (root / "gtFine" / "val" / "scenes").iterdir())
        ['scenes_000000_000019_gtFine_labelIds.png']
    """
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


WRITERS = {
    "write-coco": (write_coco, "DIR/{train,val,test}2017/*.png, DIR/annotations/instances_*.json"),
    "write-cityscapes": (write_cityscapes, "DIR/leftImg8bit/<split>/, DIR/gtFine/<split>/"),
}


def main(argv: list[str] | None = None) -> int:
    """``python -m involution.data.scene_files write-coco DIR`` / ``write-cityscapes DIR``, with
    the scene keys as options (``--canvas-size 96``); exit status 2 and one ``error:`` line on a
    bad key."""
    parser = argparse.ArgumentParser(
        prog="python -m involution.data.scene_files",
        description="Write the digit scenes to disk in a real data set format.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, where) in WRITERS.items():
        command = commands.add_parser(name, help=where)
        command.add_argument("directory")
        command.add_argument("--seed", type=int, default=42)
        for split in SPLITS:
            command.add_argument(f"--{split}-size", type=int, default=DEFAULT_SIZES[split])
        for field in dataclasses.fields(SceneConfig):
            command.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default))
    args = parser.parse_args(argv)
    scene = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(SceneConfig)
        if getattr(args, field.name) is not None
    }
    sizes = {split: getattr(args, f"{split}_size") for split in SPLITS}
    try:
        written = WRITERS[args.command][0](args.directory, sizes=sizes, seed=args.seed, **scene)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
