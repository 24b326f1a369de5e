"""robvae.data.registry: load_dataset, DATASETS, dataset_shape."""

import pytest
import torch

import robvae
import robvae.data as data
from robvae.data import DATASETS, ImageDataset, dataset_shape, load_dataset
from robvae.errors import DataError


def test_names_and_shapes():
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10")
    assert [dataset_shape(n) for n in DATASETS] == [(1, 8, 8), (1, 28, 28), (1, 28, 28), (3, 32, 32)]
    assert dataset_shape("Fashion_MNIST") == (1, 28, 28) and dataset_shape("CIFAR-10") == (3, 32, 32)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown data set 'svhn'; valid names: digits, mnist, fashion-mnist, cifar10"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="valid names: digits, mnist"):
        dataset_shape("imagenet")


def test_unknown_split_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown split 'val'; valid splits: train, test"):
        load_dataset("digits", "val")


def test_digits_through_registry():
    ds = load_dataset("digits", "test")
    assert isinstance(ds, ImageDataset) and len(ds) == 360 and ds.shape == dataset_shape("digits")
    assert torch.equal(ds.images, data.load_digits("test").images)


def test_missing_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="pass --data-dir"):
        load_dataset("mnist", "train")
    with pytest.raises(DataError, match="cifar10: no data folder given"):
        load_dataset("cifar10", "test")
    with pytest.raises(DataError, match=r"mnist train files not found"):
        load_dataset("mnist", "train", data_dir=tmp_path)
    assert issubclass(DataError, ValueError)


def test_exports():
    assert robvae.load_dataset is load_dataset and robvae.ImageDataset is ImageDataset
    for name in data.__all__:
        assert hasattr(data, name), name
