"""Shared fixtures: small data sets and models, the path to the real MNIST subset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def mnist10k_dir() -> Path | None:
    """The shared 10k MNIST subset, if this machine has it."""
    for cand in (os.environ.get("ROBVAE_MNIST10K"), REPO.parent / "shared/data/mnist-10k"):
        if cand and (Path(cand) / "t10k-images-idx3-ubyte.gz").exists():
            return Path(cand)
    return None


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(scope="session")
def digits_small():
    """(train, test) subsets of the embedded digits: 300 train, 100 test."""
    from robvae.data import load_dataset

    return load_dataset("digits", "train").subset(300), load_dataset("digits", "test").subset(100)
