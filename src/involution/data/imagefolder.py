"""ImageNet-style folders (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``) through ImageFolder."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision import datasets
from torchvision.transforms import v2 as T

from involution.data.base import ClassificationDataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFolderDataModule(ClassificationDataModule):
    """Standard ImageNet augmentation: RandomResizedCrop + flip for train; resize + center crop for eval.

    ImageNet's test labels are not public, so ``val/`` serves as both validation and test set.
    """

    in_channels = 3

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 8,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        self.data_dir, self.image_size = Path(data_dir), image_size
        for split in ("train", "val"):
            if not (self.data_dir / split).is_dir():
                raise FileNotFoundError(
                    f"data.data_dir={str(self.data_dir)!r} must contain {split}/ with one folder per class"
                )
        self.num_classes = len(datasets.folder.find_classes(str(self.data_dir / "train"))[0])
        to_tensor = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        self.train_transform = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *to_tensor])
        resize = int(round(image_size / 0.875))
        self.eval_transform = T.Compose([T.Resize(resize), T.CenterCrop(image_size), *to_tensor])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = datasets.ImageFolder(str(self.data_dir / "train"), self.train_transform)
        self.val_set = datasets.ImageFolder(str(self.data_dir / "val"), self.eval_transform)
        if self.val_set.classes != self.train_set.classes:
            raise ValueError(f"{self.data_dir}/val classes differ from {self.data_dir}/train classes")
        self.test_set = self.val_set
