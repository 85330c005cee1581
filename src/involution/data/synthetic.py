"""Random images and labels of a chosen shape: for benchmarks and smoke tests, not for accuracy."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from involution.data.base import ClassificationDataModule


class SyntheticDataModule(ClassificationDataModule):
    def __init__(
        self,
        num_samples: int = 512,
        image_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 10,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.num_samples, self.image_size, self.in_channels = num_samples, image_size, in_channels
        self.num_classes, self.seed = num_classes, seed

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)

        def make(count: int) -> TensorDataset:
            images = torch.randn(
                count, self.in_channels, self.image_size, self.image_size, generator=generator
            )
            labels = torch.randint(0, self.num_classes, (count,), generator=generator)
            return TensorDataset(images, labels)

        self.train_set = make(self.num_samples)
        self.val_set = make(max(self.num_samples // 4, self.batch_size))
        self.test_set = self.val_set
