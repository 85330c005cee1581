"""LightningDataModules: digits (embedded default), CIFAR-10/100, ImageFolder (ImageNet),
synthetic; for detection and segmentation, digit scenes (embedded default), COCO and Cityscapes."""

from involution.data.cifar import CIFARDataModule
from involution.data.cityscapes import CityscapesDataModule
from involution.data.coco import COCODataModule
from involution.data.digits import DigitsDataModule
from involution.data.imagefolder import ImageFolderDataModule
from involution.data.scenes import SceneDetectionDataModule, SceneSegmentationDataModule
from involution.data.synthetic import SyntheticDataModule

__all__ = [
    "CIFARDataModule",
    "COCODataModule",
    "CityscapesDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "SceneDetectionDataModule",
    "SceneSegmentationDataModule",
    "SyntheticDataModule",
]
