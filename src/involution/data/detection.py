"""What every detection data module hands the detectors: lists of images and target dicts.

A batch is ``(images, targets)``: images a list of float32 [3, H, W] tensors in [0, 1] (sizes may
differ, the detector resizes and pads), targets a list of dicts with ``boxes`` float32 [n, 4] (XYXY,
absolute pixels), ``labels`` int64 [n] in 1..num_classes (0 is the detectors' background),
``masks`` uint8 [n, H, W] when the module loads masks, ``image_id`` int, and on the evaluation
splits ``iscrowd`` int64 [n] (torchmetrics' MeanAveragePrecision ignores crowd regions with it).
Images with no objects have ``boxes`` of shape [0, 4]. No normalisation: the models normalise.
"""

from __future__ import annotations

from typing import Any

import torch

from involution.data.base import SeededDataModule


def plain_target(target: dict[str, Any]) -> dict[str, Any]:
    """A target dict of plain tensors (tv_tensors unwrapped: their metadata, e.g. a box's canvas
    size, goes stale as soon as a detector resizes the image)."""
    out: dict[str, Any] = {
        "boxes": torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor).float().reshape(-1, 4),
        "labels": torch.as_tensor(target["labels"]).as_subclass(torch.Tensor).long(),
        "image_id": int(target["image_id"]),
    }
    if "masks" in target:
        out["masks"] = torch.as_tensor(target["masks"]).as_subclass(torch.Tensor).to(torch.uint8)
    if "iscrowd" in target:
        out["iscrowd"] = torch.as_tensor(target["iscrowd"]).as_subclass(torch.Tensor).long()
    return out


def collate_detection(
    batch: list[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Items stay a list (images of different sizes are not stacked: the detector batches them)."""
    images = [image.as_subclass(torch.Tensor) for image, _ in batch]
    return images, [plain_target(target) for _, target in batch]


class DetectionDataModule(SeededDataModule):
    """Subclasses set ``num_classes`` (foreground categories), ``class_names``, ``has_masks`` and
    ``image_size`` (the (H, W) of a typical model input, for cost counts) and fill the three sets
    in ``setup``."""

    in_channels = 3
    num_classes: int
    class_names: list[str]
    has_masks: bool
    image_size: tuple[int, int] | None
    collate_fn = staticmethod(collate_detection)
