"""The embedded default data set: scikit-learn's 1,797 handwritten digits (real 8x8 scans)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from involution.data.base import ClassificationDataModule


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 0.5:
            raise ValueError(f"data.{key} must be in (0, 0.5), got {value!r}")


def split_indices(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seed-determined train/val/test indices of the scans with these labels."""
    indices = np.arange(len(labels))
    rest, test = train_test_split(
        indices, test_size=test_fraction, stratify=labels, random_state=seed
    )
    val_share = val_fraction / (1 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, stratify=labels[rest], random_state=seed
    )
    return train, val, test


class _Augmented(Dataset):
    """Random shifts of a few pixels: cheap, label-preserving, and enough to regularise."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, max_shift: int) -> None:
        self.images, self.labels, self.max_shift = images, labels, max_shift

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.max_shift:
            dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
            image = torch.roll(image, shifts=(dy, dx), dims=(1, 2))
        return image, self.labels[index]


class DigitsDataModule(ClassificationDataModule):
    """Digits resized to ``image_size`` (1 channel), split train/val/test by a stratified, seeded
    split."""

    num_classes = 10
    in_channels = 1

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int = 32,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        max_shift: int = 2,
        seed: int = 42,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_fractions(val_fraction, test_fraction)
        self.image_size = image_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.max_shift, self.seed = max_shift, seed

    def split_indices(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stratified, seed-determined train/val/test indices."""
        return split_indices(labels, self.val_fraction, self.test_fraction, self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
        images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        images = (images - images.mean()) / images.std()
        labels = torch.from_numpy(digits.target).long()
        train, val, test = self.split_indices(digits.target)
        self.train_set = _Augmented(images[train], labels[train], self.max_shift)
        self.val_set = TensorDataset(images[val], labels[val])
        self.test_set = TensorDataset(images[test], labels[test])
