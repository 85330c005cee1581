"""Data modules, each on data in its real on-disk format (tiny files the tests write)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from involution.data import (
    CIFARDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
)


def test_digits_split_is_stratified_disjoint_and_seeded() -> None:
    dm = DigitsDataModule(seed=3)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 1797
    labels = np.array([int(y) for _, y in dm.val_set])
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 0.8 * counts.max(), "every class is represented about equally in val"
    from sklearn.datasets import load_digits

    targets = load_digits().target
    train, val, test = dm.split_indices(targets)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    again = DigitsDataModule(seed=3).split_indices(targets)
    other = DigitsDataModule(seed=4).split_indices(targets)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(val, other[1])
    image, label = dm.train_set[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32 and 0 <= int(label) < 10


def _write_cifar(
    root: Path, folder: str, label_key: str, num_classes: int, rng: np.random.Generator
) -> None:
    """The python-pickle layout torchvision reads: data_batch_1..5, test_batch, meta."""
    base = root / folder
    base.mkdir(parents=True)
    names = (
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        if folder.startswith("cifar-10-")
        else ["train", "test"]
    )
    count = 6 if len(names) == 6 else 30  # 30 training images either way
    for name in names:
        entry = {
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            label_key: rng.integers(0, num_classes, count).tolist(),
        }
        (base / name).write_bytes(pickle.dumps(entry))
    meta_name, meta_key = (
        ("batches.meta", "label_names")
        if folder.startswith("cifar-10-")
        else ("meta", "fine_label_names")
    )
    (base / meta_name).write_bytes(
        pickle.dumps({meta_key: [f"class{i}" for i in range(num_classes)]})
    )


@pytest.mark.parametrize(
    ("name", "folder", "label_key", "num_classes"),
    [
        ("cifar10", "cifar-10-batches-py", "labels", 10),
        ("cifar100", "cifar-100-python", "fine_labels", 100),
    ],
)
def test_cifar_reads_the_torchvision_format(
    tmp_path, monkeypatch, name, folder, label_key, num_classes
) -> None:
    # Real archives carry md5 sums we cannot reproduce for tiny files; everything else is the real
    # path.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    _write_cifar(tmp_path, folder, label_key, num_classes, np.random.default_rng(0))
    dm = CIFARDataModule(name=name, data_dir=str(tmp_path), batch_size=4, num_workers=0, val_size=5)
    dm.setup()
    assert dm.num_classes == num_classes and dm.in_channels == 3
    assert len(dm.train_set) + len(dm.val_set) == 30 and len(dm.val_set) == 5
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.max() < num_classes


def test_cifar_missing_directory_names_the_key(tmp_path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"data\.data_dir=.*cifar-10-batches-py.*data\.download=true"
    ):
        CIFARDataModule(data_dir=str(tmp_path / "nowhere"))


def _write_image_folder(root: Path, classes: list[str], per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.JPEG", format="JPEG")


def test_image_folder_reads_imagenet_layout(tmp_path) -> None:
    _write_image_folder(tmp_path, ["n01440764", "n01443537", "n01484850"], per_class=2)
    dm = ImageFolderDataModule(
        data_dir=str(tmp_path), image_size=32, batch_size=3, num_workers=0, pin_memory=False
    )
    assert dm.num_classes == 3
    dm.setup()
    train_images, _ = next(iter(dm.train_dataloader()))
    val_images, val_labels = next(iter(dm.val_dataloader()))
    assert train_images.shape == (3, 3, 32, 32) and val_images.shape == (3, 3, 32, 32)
    assert len(dm.test_set) == 6 and set(val_labels.tolist()) <= {0, 1, 2}


def test_image_folder_missing_split_names_the_key(tmp_path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"data\.data_dir=.*val/"):
        ImageFolderDataModule(data_dir=str(tmp_path))


def test_synthetic_shapes_and_determinism() -> None:
    first, second = (
        SyntheticDataModule(num_samples=8, image_size=12, num_classes=4, batch_size=4)
        for _ in range(2)
    )
    first.setup()
    second.setup()
    images, labels = next(iter(first.val_dataloader()))
    assert images.shape == (4, 3, 12, 12) and labels.max() < 4
    assert torch.equal(first.train_set.tensors[0], second.train_set.tensors[0])
