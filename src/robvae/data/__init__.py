"""Data sets: digits (embedded), MNIST and Fashion-MNIST (IDX), CIFAR-10 (python batches).

``load_dataset(name, split, data_dir=None, download=False) -> ImageDataset``.
"""

from .base import ImageDataset

__all__ = ["ImageDataset"]
