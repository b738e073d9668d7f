"""Datasets: CIFAR-10/100 (official python archives), image folders (extracted or archived),
MNIST in its own order, scikit-learn's bundled digits, minibatch streams; poisoned-dataset
export."""

from stackelberg.data.batches import TensorBatches
from stackelberg.data.cifar import CIFAR_SOURCES, download_cifar, load_cifar
from stackelberg.data.datasets import DATASETS, load_dataset, load_digits, subset
from stackelberg.data.folders import ImageDataset, load_image_folder, load_image_splits
from stackelberg.data.mnist import load_mnist

__all__ = [
    "CIFAR_SOURCES",
    "DATASETS",
    "ImageDataset",
    "TensorBatches",
    "download_cifar",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_image_splits",
    "load_mnist",
    "subset",
]
