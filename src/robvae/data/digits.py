"""scikit-learn's bundled 8x8 handwritten digits (no network, no files to fetch).

1,797 images of 8x8 pixels with grey levels 0..16, scaled to [0, 1] by dividing by 16 and shaped
[N, 1, 8, 8]. The train/test split is fixed: a numpy permutation with seed 0, the first 1,437
indices for "train" and the last 360 for "test" (not stratified).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .base import ImageDataset

DIGITS_SEED = 0
DIGITS_TRAIN_SIZE = 1437
DIGITS_TEST_SIZE = 360
DIGITS_SHAPE = (1, 8, 8)
SPLITS = ("train", "test")


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float32 [N, 8, 8] in [0, 1], labels int64 [N], permutation int64 [N]); read-only."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    if images.shape[0] != DIGITS_TRAIN_SIZE + DIGITS_TEST_SIZE:  # pragma: no cover - sklearn change
        raise RuntimeError(f"scikit-learn digits has {images.shape[0]} images, expected 1797")
    perm = np.random.default_rng(DIGITS_SEED).permutation(images.shape[0])
    for array in (images, labels, perm):
        array.setflags(write=False)
    return images, labels, perm


def digits_indices(split: str) -> np.ndarray:
    """Row indices (into scikit-learn's order) of the fixed train or test split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for digits; valid splits: {', '.join(SPLITS)}")
    perm = _digits_arrays()[2]
    return perm[:DIGITS_TRAIN_SIZE] if split == "train" else perm[DIGITS_TRAIN_SIZE:]


def load_digits(split: str = "train") -> ImageDataset:
    """The digits split as float32 [N, 1, 8, 8] in [0, 1] with int64 labels 0..9."""
    idx = digits_indices(split)
    images, labels, _ = _digits_arrays()
    x = torch.from_numpy(images[idx].reshape(-1, *DIGITS_SHAPE).copy())
    y = torch.from_numpy(labels[idx].copy())
    return ImageDataset(x, y, "digits", split)
