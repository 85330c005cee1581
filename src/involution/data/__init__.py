"""LightningDataModules: digits (embedded default), CIFAR-10/100, ImageFolder (ImageNet),
synthetic."""

from involution.data.cifar import CIFARDataModule
from involution.data.digits import DigitsDataModule
from involution.data.imagefolder import ImageFolderDataModule
from involution.data.synthetic import SyntheticDataModule

__all__ = ["CIFARDataModule", "DigitsDataModule", "ImageFolderDataModule", "SyntheticDataModule"]
