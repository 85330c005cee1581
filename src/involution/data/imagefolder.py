"""ImageNet-style folders (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``) through ImageFolder."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2 as T

from involution.data.base import ClassificationDataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFolderDataModule(ClassificationDataModule):
    """Standard ImageNet augmentation: RandomResizedCrop + flip for train; resize + center crop
    for eval.

    ImageNet's test labels are not public, so ``val/`` serves as both validation and test set.
    With ``verify_images`` (default) every image's header and structure is checked with PIL before
    training (threads; about a minute for ImageNet's 1.3 M files on a local disk), so an unreadable
    or corrupt file stops the run at once with its path instead of failing hours in.
    """

    in_channels = 3

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 8,
        pin_memory: bool = True,
        seed: int = 42,
        verify_images: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        self.data_dir, self.image_size, self.seed = Path(data_dir), image_size, seed
        self.verify_images = verify_images
        for split in ("train", "val"):
            if not (self.data_dir / split).is_dir():
                raise FileNotFoundError(
                    f"data.data_dir={str(self.data_dir)!r} must contain {split}/ "
                    "with one folder per class"
                )
        try:
            self.num_classes = len(datasets.folder.find_classes(str(self.data_dir / "train"))[0])
        except FileNotFoundError:
            raise FileNotFoundError(
                f"data.data_dir={str(self.data_dir)!r}: train/ holds no class folders (it is empty)"
            ) from None
        to_tensor = [
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
        self.train_transform = T.Compose(
            [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *to_tensor]
        )
        resize = int(round(image_size / 0.875))
        self.eval_transform = T.Compose([T.Resize(resize), T.CenterCrop(image_size), *to_tensor])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        sets = []
        for split, transform in (("train", self.train_transform), ("val", self.eval_transform)):
            try:
                sets.append(datasets.ImageFolder(str(self.data_dir / split), transform))
            except FileNotFoundError as error:  # no class folders, or class folders without images
                first = str(error).splitlines()[0]
                raise FileNotFoundError(
                    f"data.data_dir={str(self.data_dir)!r}: {split}/ {first}"
                ) from None
        self.train_set, self.val_set = sets
        if self.val_set.classes != self.train_set.classes:
            raise ValueError(
                f"{self.data_dir}/val classes differ from {self.data_dir}/train classes"
            )
        if self.verify_images:
            for dataset in sets:
                verify_images([path for path, _ in dataset.samples])
        self.test_set = self.val_set


def _verify(path: str) -> str | None:
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def verify_images(paths: list[str], threads: int = 16) -> None:
    """Raise ValueError naming the first unreadable or corrupt image (PIL open + verify)."""
    with ThreadPoolExecutor(threads) as pool:
        for path, problem in zip(paths, pool.map(_verify, paths, chunksize=64)):
            if problem is not None:
                raise ValueError(f"data.data_dir: unreadable or corrupt image {path} ({problem})")
