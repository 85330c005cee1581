"""CIFAR-10/100 through torchvision, with the standard crop-and-flip augmentation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Subset
from torchvision import datasets
from torchvision.transforms import v2 as T

from involution.data.base import ClassificationDataModule

_CIFAR = {
    "cifar10": (
        datasets.CIFAR10,
        10,
        "cifar-10-batches-py",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": (
        datasets.CIFAR100,
        100,
        "cifar-100-python",
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}


class CIFARDataModule(ClassificationDataModule):
    """``name`` is cifar10 or cifar100; the last ``val_size`` training images (seeded) form val."""

    in_channels = 3
    image_size = 32

    def __init__(
        self,
        name: str = "cifar10",
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 2,
        val_size: int = 5000,
        seed: int = 42,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if name not in _CIFAR:
            raise ValueError(f"data.name must be one of {sorted(_CIFAR)}, got {name!r}")
        self.dataset_class, self.num_classes, folder, mean, std = _CIFAR[name]
        self.name, self.data_dir, self.download = name, Path(data_dir), download
        if not download and not (self.data_dir / folder).is_dir():
            raise FileNotFoundError(
                f"data.data_dir={str(self.data_dir)!r} has no {folder}/ ({name}); "
                "point data.data_dir at it or set data.download=true"
            )
        self.val_size, self.seed = val_size, seed
        normalize = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
        self.train_transform = T.Compose(
            [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *normalize]
        )
        self.eval_transform = T.Compose(normalize)

    def prepare_data(self) -> None:
        if self.download:
            self.dataset_class(self.data_dir, train=True, download=True)
            self.dataset_class(self.data_dir, train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_aug = self.dataset_class(self.data_dir, train=True, transform=self.train_transform)
        train_plain = self.dataset_class(self.data_dir, train=True, transform=self.eval_transform)
        if not 0 < self.val_size < len(train_aug):
            raise ValueError(
                f"data.val_size must be in (0, {len(train_aug)}), got {self.val_size!r}"
            )
        order = torch.randperm(
            len(train_aug), generator=torch.Generator().manual_seed(self.seed)
        ).tolist()
        self.train_set = Subset(train_aug, order[self.val_size :])
        self.val_set = Subset(train_plain, order[: self.val_size])
        self.test_set = self.dataset_class(
            self.data_dir, train=False, transform=self.eval_transform
        )
