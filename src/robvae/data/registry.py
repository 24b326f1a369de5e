"""One entry point for every data set: ``load_dataset(name, split, data_dir, download)``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError
from .base import ImageDataset
from .cifar import CIFAR_FOLDER, find_cifar_dir, load_cifar10
from .digits import load_digits
from .idx import FASHION_MNIST_SYSTEM_DIR, find_idx_files, load_fashion_mnist, load_mnist

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")
SPLITS: tuple[str, ...] = ("train", "test")

_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar_10": "cifar10"}


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (case-insensitive; a few spellings accepted); else ValueError."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def dataset_shape(name: str) -> tuple[int, int, int]:
    """The image shape (C, H, W) of a data set, without loading it."""
    return _SHAPES[canonical_name(name)]


#: name -> loader(split, data_dir, download)
_LOADERS: dict[str, Callable[..., ImageDataset]] = {
    "digits": lambda split, data_dir, download: load_digits(split),
    "mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10,
}


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = False) -> ImageDataset:
    """Load ``split`` ("train" or "test") of data set ``name`` (one of ``DATASETS``).

    Images are float32 [N, C, H, W] in [0, 1], labels int64 [N]. ``data_dir`` is the folder with
    the files (ignored by "digits", which ships with scikit-learn); ``download=True`` fetches the
    official MNIST / Fashion-MNIST files when they are missing. Raises ValueError for an unknown
    name or split and ``robvae.errors.DataError`` for missing or bad files.
    """
    key = canonical_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return _LOADERS[key](split, data_dir, download)


def missing_data(name: str, split: str = "train", data_dir: str | os.PathLike | None = None) -> str | None:
    """Why ``load_dataset(name, split, data_dir)`` (without download) would find no files, in one
    line, or None when they are there; nothing is read (the files' contents are checked on load).
    A relative ``data_dir`` is taken from the current folder, as ``load_dataset`` takes it."""
    key = canonical_name(name)
    if key == "digits":
        return None
    if key == "cifar10":
        if data_dir is None:
            return "cifar10: no data folder given"
        return None if find_cifar_dir(data_dir) is not None else f"cifar10: no {CIFAR_FOLDER} batch files in {data_dir}"
    if data_dir is None:
        if key == "mnist":
            return "mnist: no data folder given"
        data_dir = FASHION_MNIST_SYSTEM_DIR
    folder = Path(data_dir)
    try:
        found = find_idx_files(folder, split, key)
    except DataError as e:  # one of the pair without the other
        return f"{key}: {e}"
    if found is not None:
        return None
    return f"{key} {split} files not found: " + (f"no IDX files in {folder}" if folder.is_dir() else
                                                  f"folder {folder} does not exist")
