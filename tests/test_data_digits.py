"""robvae.data.digits: scikit-learn's 8x8 digits, scaled to [0, 1], fixed seeded split."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from robvae.data import ImageDataset, load_digits
from robvae.data.digits import digits_indices


def test_shapes_sizes_and_types():
    train, test = load_digits("train"), load_digits("test")
    assert isinstance(train, ImageDataset)
    assert tuple(train.images.shape) == (1437, 1, 8, 8)
    assert tuple(test.images.shape) == (360, 1, 8, 8)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert (train.name, train.split, test.split) == ("digits", "train", "test")
    assert train.shape == (1, 8, 8)


def test_range_is_exactly_grey_levels_over_16():
    x = torch.cat([load_digits("train").images, load_digits("test").images])
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    levels = x * 16
    assert torch.equal(levels, levels.round())  # every value is k/16, k in 0..16


def test_split_is_a_partition_matching_sklearn():
    bunch = sk_load_digits()
    tr, te = digits_indices("train"), digits_indices("test")
    assert len(set(tr.tolist()) & set(te.tolist())) == 0
    assert sorted(tr.tolist() + te.tolist()) == list(range(1797))
    assert np.array_equal(tr, np.random.default_rng(0).permutation(1797)[:1437])
    train = load_digits("train")
    np.testing.assert_array_equal(train.images.numpy().reshape(-1, 64) * 16, bunch.data[tr])
    np.testing.assert_array_equal(train.labels.numpy(), bunch.target[tr])


def test_deterministic_and_pinned_label_counts():
    a, b = load_digits("test"), load_digits("test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # regression pin of the seed-0 split
    assert torch.bincount(a.labels).tolist() == [39, 37, 47, 28, 42, 32, 37, 27, 30, 41]
    assert torch.bincount(load_digits("train").labels).tolist() == [139, 145, 130, 155, 139, 150, 144, 152, 144, 139]


def test_returned_tensors_are_independent_copies():
    a = load_digits("train")
    a.images.zero_()
    assert load_digits("train").images.max().item() == 1.0


def test_bad_split():
    with pytest.raises(ValueError, match="valid splits: train, test"):
        load_digits("validation")
