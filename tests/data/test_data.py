"""Data: IDX files are really parsed, splits are seeded, disjoint and leave the test split alone."""

from __future__ import annotations

import gzip

import pytest
import torch

from kdsearch.config.spec import DataSpec
from kdsearch.data import load_splits, read_idx, split_indices, student_subsets
from kdsearch.errors import KdsearchError


def test_split_indices_are_deterministic_disjoint_and_complete():
    a_train, a_val = split_indices(1000, 100, seed=3)
    b_train, b_val = split_indices(1000, 100, seed=3)
    assert torch.equal(a_train, b_train) and torch.equal(a_val, b_val)
    assert len(a_val) == 100 and len(a_train) == 900
    assert set(a_train.tolist()).isdisjoint(a_val.tolist())
    assert set(a_train.tolist()) | set(a_val.tolist()) == set(range(1000))
    _, other_val = split_indices(1000, 100, seed=4)
    assert not torch.equal(a_val, other_val)


def test_student_subsets_are_disjoint_and_sized():
    labeled, unlabeled = student_subsets(900, 50, 300, seed=0)
    assert len(labeled) == 50 and len(unlabeled) == 300
    assert set(labeled.tolist()).isdisjoint(unlabeled.tolist())
    assert torch.equal(labeled, student_subsets(900, 50, 300, seed=0)[0])
    with pytest.raises(KdsearchError, match="exceeds the 900 training images"):
        student_subsets(900, 600, 301, seed=0)


def test_load_splits_from_idx_files(idx_dataset):
    splits = load_splits(DataSpec(root=idx_dataset, val_size=80, labeled=40, unlabeled=100))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (320, 80, 100)
    assert splits.num_classes == 4 and splits.in_channels == 1 and splits.image_size == 28
    assert splits.train.x.shape == (320, 1, 28, 28) and splits.train.x.dtype == torch.float32
    assert abs(float(splits.train.x.mean())) < 1e-4  # normalized with train statistics
    assert (
        splits.fingerprint
        == load_splits(DataSpec(root=idx_dataset, val_size=80, labeled=40, unlabeled=100)).fingerprint
    )


def test_real_fashion_mnist_parses(fashion_root):
    labels = read_idx(fashion_root / "t10k-labels-idx1-ubyte.gz")
    images = read_idx(fashion_root / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert sorted(set(labels.tolist())) == list(range(10))


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(KdsearchError, match="apt-get install dataset-fashion-mnist.*--data-root"):
        load_splits(DataSpec(root=tmp_path))


def test_truncated_and_foreign_files_are_reported(idx_dataset):
    path = idx_dataset / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(KdsearchError, match="truncated or corrupt"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(KdsearchError, match="cannot read"):
        read_idx(path)
    path.write_bytes(gzip.compress(b"\x89PNG...."))
    with pytest.raises(KdsearchError, match="not an IDX file"):
        read_idx(path)
    packed = bytearray(gzip.compress(raw))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = bytes(64)  # damaged inside the deflate stream
    path.write_bytes(bytes(packed))
    with pytest.raises(KdsearchError, match="cannot read"):
        read_idx(path)


def test_idx_files_that_do_not_fit_together_are_named(idx_dataset):
    import numpy as np
    from conftest import write_idx

    from kdsearch.data import read_idx_dataset

    train_images, train_labels = idx_dataset / "train-images-idx3-ubyte.gz", idx_dataset / "train-labels-idx1-ubyte.gz"
    images, labels = train_images.read_bytes(), train_labels.read_bytes()
    train_images.write_bytes(labels)
    train_labels.write_bytes(images)
    with pytest.raises(KdsearchError, match="are the images and labels files swapped"):
        read_idx_dataset(idx_dataset)
    train_images.write_bytes(images)
    train_labels.write_bytes(labels)
    write_idx(idx_dataset / "t10k-images-idx3-ubyte.gz", np.zeros((100, 14, 14)))
    with pytest.raises(KdsearchError, match=r"train images are \(28, 28\) pixels but test images \(14, 14\)"):
        read_idx_dataset(idx_dataset)
    write_idx(idx_dataset / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28)))
    write_idx(idx_dataset / "t10k-labels-idx1-ubyte.gz", np.zeros(0))
    with pytest.raises(KdsearchError, match="the test files hold no images"):
        read_idx_dataset(idx_dataset)
