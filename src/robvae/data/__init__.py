"""Data sets: digits (scikit-learn), MNIST and Fashion-MNIST (IDX), CIFAR-10 (python batches).

``load_dataset(name, split="train", data_dir=None, download=False) -> ImageDataset``; images are
float32 [N, C, H, W] in [0, 1], labels int64 [N]. ``DATASETS`` lists the names and
``dataset_shape(name)`` gives (C, H, W) without loading anything.
"""

from .base import ImageDataset
from .cifar import load_cifar10, read_cifar_batch
from .digits import load_digits
from .download import CHECKSUMS, download_dataset, download_file, verify_checksum
from .idx import load_fashion_mnist, load_mnist, read_idx
from .registry import DATASETS, dataset_shape, load_dataset

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "ImageDataset",
    "dataset_shape",
    "download_dataset",
    "download_file",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "read_cifar_batch",
    "read_idx",
    "verify_checksum",
]
