"""Datamodules: one shared classification datamodule, one subclass per dataset layout."""

from datamodules.classification import ClassificationDataModule
from datamodules.fashion_mnist import FashionMNISTDataModule
from datamodules.image_folder import ImageFolderDataModule, ImageNetDataModule
from datamodules.synthetic import SyntheticDataModule

__all__ = [
    "ClassificationDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "SyntheticDataModule",
]
