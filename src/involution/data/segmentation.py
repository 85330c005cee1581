"""What every semantic segmentation data module hands the segmenters: stacked images and masks.

A batch is ``(images, masks)``: images float32 [N, 3, H, W] in [0, 1], masks int64 [N, H, W] with
class indices in 0..num_classes-1 and ``ignore_index`` (255) where no label counts. Items of
different sizes (evaluation on whole images) are padded to the largest at the bottom and right:
images with 0, masks with ``ignore_index``. No normalisation: the models normalise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from involution.data.base import SeededDataModule

IGNORE_INDEX = 255


def collate_segmentation(
    batch: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images, masks = [], []
    for image, mask in batch:
        pad = (0, width - image.shape[-1], 0, height - image.shape[-2])
        images.append(F.pad(image.as_subclass(torch.Tensor), pad, value=0.0))
        mask = mask.as_subclass(torch.Tensor).long().reshape(image.shape[-2:])
        masks.append(F.pad(mask, pad, value=IGNORE_INDEX))
    return torch.stack(images), torch.stack(masks)


class SegmentationDataModule(SeededDataModule):
    """Subclasses set ``num_classes``, ``class_names`` and ``image_size`` (the (H, W) of a typical
    model input, for cost counts) and fill the three sets in ``setup``."""

    in_channels = 3
    ignore_index = IGNORE_INDEX
    num_classes: int
    class_names: list[str]
    image_size: tuple[int, int]
    collate_fn = staticmethod(collate_segmentation)
