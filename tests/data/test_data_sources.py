"""Data sources beyond IDX: CIFAR-10 batches, image folders, CSV + images (MHIST layout).

Every dataset here is made by the test itself in tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx
from helpers import folder_spec, make_class_folder, save_image, write_cifar, write_mhist

import kdsearch.data.cifar10 as cifar10_module
import kdsearch.data.idx as idx_module
from kdsearch.config.load import spec_from_dict
from kdsearch.config.spec import DataSpec
from kdsearch.data import (
    CIFAR10_CLASSES,
    data_cache_dir,
    find_cifar10_folder,
    list_image_folder,
    load_splits,
    read_csv_index,
    resolve_size,
    student_subsets,
)
from kdsearch.errors import KdsearchError


@pytest.fixture
def cats_dogs(tmp_path) -> Path:
    """A seed-000-style cats-vs-dogs folder: 40 + 40 images, no split folders."""
    return make_class_folder(tmp_path / "cats_vs_dogs", {"cat": 40, "dog": 40})


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------------
# image_folder
# ------------------------------------------------------------------------------------------


def test_image_folder_loads_resized_rgb_with_seeded_splits(cats_dogs, cache):
    splits = load_splits(folder_spec(cats_dogs), cache_dir=cache)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54, 6, 20)  # 80 - 20 test - 6 val
    assert splits.train.x.shape == (54, 3, 8, 8) and splits.train.x.dtype == torch.float32
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (2, 3, 8)
    assert splits.class_names == ["cat", "dog"]
    assert len(splits.labeled) == 44 and len(splits.unlabeled) == 10  # labeled = 0: all not unlabeled
    assert set(splits.labeled.tolist()).isdisjoint(splits.unlabeled.tolist())
    per_channel = splits.train.x.mean(dim=(0, 2, 3))
    assert torch.allclose(per_channel, torch.zeros(3), atol=1e-4)  # normalized with the train split's statistics
    # cats are red, dogs blue: the label really belongs to the image
    red_minus_blue = splits.test.x[:, 0].mean(dim=(1, 2)) - splits.test.x[:, 2].mean(dim=(1, 2))
    assert bool(((red_minus_blue > 0) == (splits.test.y == 0)).all())

    again = load_splits(folder_spec(cats_dogs), cache_dir=cache)
    assert again.fingerprint == splits.fingerprint
    assert torch.equal(again.train.x, splits.train.x) and torch.equal(again.test.y, splits.test.y)
    assert torch.equal(again.labeled, splits.labeled)
    other = load_splits(folder_spec(cats_dogs, split_seed=1), cache_dir=cache)
    assert other.fingerprint != splits.fingerprint


def test_image_folder_channels_size_and_explicit_normalization(cats_dogs, cache):
    gray = load_splits(folder_spec(cats_dogs, channels=1, image_size=16), cache_dir=cache)
    assert gray.train.x.shape[1:] == (1, 16, 16) and gray.in_channels == 1 and gray.image_size == 16
    fixed = load_splits(folder_spec(cats_dogs, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]), cache_dir=cache)
    assert 0.0 <= float(fixed.train.x.min()) and float(fixed.train.x.max()) <= 1.0  # x / 255 exactly
    assert fixed.fingerprint != load_splits(folder_spec(cats_dogs), cache_dir=cache).fingerprint
    assert fixed.fingerprint != gray.fingerprint


def test_explicit_train_val_test_folders_are_honoured(tmp_path, cache):
    root = tmp_path / "split"
    make_class_folder(root / "train", {"cat": 7, "dog": 5}, seed=0)
    make_class_folder(root / "val", {"cat": 2, "dog": 1}, seed=50)
    make_class_folder(root / "test", {"cat": 3, "dog": 4}, seed=90)
    spec = DataSpec(source="image_folder", root=root, image_size=8, labeled=8, unlabeled=4)  # val_size 5000: unused
    splits = load_splits(spec, cache_dir=cache)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 3, 7)
    assert splits.val.y.tolist() == [0, 0, 1] and splits.test.y.tolist() == [0, 0, 0, 1, 1, 1, 1]
    listing = list_image_folder(root)
    assert [p.parent.parent.name for p in listing.files["val"]] == ["val"] * 3

    # train/ and test/ only: val is carved from train/ with val_size
    (root / "val" / "cat").rename(tmp_path / "gone_cat")
    (root / "val" / "dog").rename(tmp_path / "gone_dog")
    (root / "val").rmdir()
    splits = load_splits(spec.model_copy(update={"val_size": 2, "labeled": 0, "unlabeled": 0}), cache_dir=cache)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 2, 7)
    assert len(splits.labeled) == 10 and len(splits.unlabeled) == 0


def test_image_folder_layout_errors_name_the_folder(tmp_path, cache):
    root = make_class_folder(tmp_path / "d", {"cat": 3, "dog": 3})
    (root / "bird").mkdir()
    (root / "bird" / "notes.txt").write_text("not an image")
    with pytest.raises(KdsearchError, match=r"class folder .*bird holds no images.*add images or remove the folder"):
        load_splits(folder_spec(root, val_size=1, test_size=1, unlabeled=0), cache_dir=cache)
    with pytest.raises(KdsearchError, match="has no class folders"):
        list_image_folder(tmp_path / "d" / "cat")
    with pytest.raises(KdsearchError, match="image folder .* not found"):
        list_image_folder(tmp_path / "nope")
    split = tmp_path / "s"
    make_class_folder(split / "train", {"cat": 2, "dog": 2})
    make_class_folder(split / "test", {"cat": 1, "fox": 1})
    with pytest.raises(KdsearchError, match=r"test has class folders not in .*train: fox"):
        list_image_folder(split)


def test_memory_budget_is_enforced_with_the_fix(cats_dogs, cache):
    with pytest.raises(
        KdsearchError,
        match=r"exceeds data.memory_budget_mb = 1.*lower data.image_size \(data.image_size = 33 would fit\), or set data.stream",
    ):
        load_splits(folder_spec(cats_dogs, image_size=256, memory_budget_mb=1, stream="never"), cache_dir=cache)
    assert not cache.exists() or not list(cache.glob("*.pt"))  # nothing decoded


# ------------------------------------------------------------------------------------------
# the decoded-image cache
# ------------------------------------------------------------------------------------------


def test_decoded_images_are_cached_and_invalidated_when_a_file_changes(cats_dogs, cache):
    spec = folder_spec(cats_dogs, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], test_size=40, val_size=1)
    first = load_splits(spec, cache_dir=cache)
    assert first.cache_hit is False and len(list(cache.glob("*.pt"))) == 1
    second = load_splits(spec, cache_dir=cache)
    assert second.cache_hit is True and torch.equal(second.test.x, first.test.x)
    assert second.fingerprint == first.fingerprint

    # another size is another entry
    assert load_splits(spec.model_copy(update={"image_size": 6}), cache_dir=cache).cache_hit is False
    assert len(list(cache.glob("*.pt"))) == 2

    # a changed file (new content, new mtime) is decoded again and seen
    changed = cats_dogs / "cat" / "001.png"
    save_image(changed, (255, 255, 255), seed=7)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = load_splits(spec, cache_dir=cache)
    assert third.cache_hit is False and third.fingerprint != first.fingerprint
    assert load_splits(spec, cache_dir=cache).cache_hit is True


def test_default_cache_dir_follows_kdsearch_cache(cats_dogs, tmp_path, monkeypatch):
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path / "env-cache"))
    assert data_cache_dir() == tmp_path / "env-cache" / "data"
    assert load_splits(folder_spec(cats_dogs)).cache_hit is False
    assert load_splits(folder_spec(cats_dogs)).cache_hit is True
    assert len(list((tmp_path / "env-cache" / "data").glob("*.pt"))) == 1


def test_damaged_cache_entry_is_rebuilt(cats_dogs, cache):
    spec = folder_spec(cats_dogs)
    load_splits(spec, cache_dir=cache)
    (entry,) = cache.glob("*.pt")
    entry.write_bytes(b"garbage")
    assert load_splits(spec, cache_dir=cache).cache_hit is False
    assert load_splits(spec, cache_dir=cache).cache_hit is True


# ------------------------------------------------------------------------------------------
# corrupt images
# ------------------------------------------------------------------------------------------


def corrupt(root: Path) -> list[Path]:
    bad_png = root / "cat" / "broken.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    good = save_image(root / "dog" / "trunc.jpg", (10, 10, 10), seed=1, size=(64, 64))
    truncated = good.read_bytes()
    good.write_bytes(truncated[: len(truncated) // 3])
    return [bad_png, good]


def test_corrupt_images_stop_the_run_with_the_list(cats_dogs, cache):
    bad = corrupt(cats_dogs)
    with pytest.raises(KdsearchError) as err:
        load_splits(folder_spec(cats_dogs), cache_dir=cache)
    message = str(err.value)
    assert "2 unreadable image(s)" in message and "data.skip_unreadable = true" in message
    assert all(str(p) in message for p in bad)


def test_corrupt_images_are_skipped_and_counted(cats_dogs, cache):
    bad = corrupt(cats_dogs)
    spec = folder_spec(cats_dogs, skip_unreadable=True)
    splits = load_splits(spec, cache_dir=cache)
    assert sorted(splits.skipped) == sorted(str(p) for p in bad)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 80  # 82 files, 2 skipped
    again = load_splits(spec, cache_dir=cache)
    assert again.cache_hit is True and again.skipped == splits.skipped and again.fingerprint == splits.fingerprint


def test_many_corrupt_images_list_the_first_ten_and_a_count(cats_dogs, cache):
    for i in range(13):
        (cats_dogs / "dog" / f"bad{i:02d}.png").write_bytes(b"nope")
    with pytest.raises(KdsearchError, match=r"13 unreadable image\(s\).*bad09\.png.*… and 3 more") as err:
        load_splits(folder_spec(cats_dogs), cache_dir=cache)
    assert "bad10.png" not in str(err.value)


# ------------------------------------------------------------------------------------------
# csv (MHIST layout)
# ------------------------------------------------------------------------------------------


def csv_spec(root: Path, **kw) -> DataSpec:
    return DataSpec(
        **({"source": "csv", "root": root, "image_size": 8, "val_size": 0.2, "labeled": 0, "unlabeled": 0} | kw)
    )


def test_csv_binary_dataset_gives_two_classes_and_partitions(tmp_path, cache):
    root = write_mhist(tmp_path / "mhist")
    splits = load_splits(csv_spec(root), cache_dir=cache)
    assert splits.num_classes == 2 and splits.class_names == ["HP", "SSA"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 10)  # val: 0.2 of the 30 train rows
    assert splits.test.y.tolist() == [0 if i % 3 else 1 for i in range(30, 40)]  # CSV order, SSA = 1
    assert splits.train.x.shape == (24, 3, 8, 8) and len(splits.labeled) == 24
    assert load_splits(csv_spec(root), cache_dir=cache).cache_hit is True


def test_csv_with_custom_columns_and_no_partition_column(tmp_path, cache):
    root = tmp_path / "c"
    rows = [[f"im{i}.png", "cat" if i % 2 else "dog", "x"] for i in range(20)]
    write_mhist(root, rows, header=["file", "label", "split"])
    spec = csv_spec(root, file_column="file", label_column="label", partition_column="", test_size=5, val_size=3)
    splits = load_splits(spec, cache_dir=cache)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 3, 5)
    assert splits.class_names == ["cat", "dog"]


def test_csv_missing_column_is_named(tmp_path, cache):
    root = write_mhist(tmp_path / "m", header=["Image Name", "Label", "x", "Partition"])
    with pytest.raises(
        KdsearchError, match=r"annotations\.csv has no column 'Majority Vote Label' \(data\.label_column\).*'Label'"
    ):
        load_splits(csv_spec(root), cache_dir=cache)


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (
            ["MHIST_900.png", "SSA", "5", "validation"],
            r"line 3 \(MHIST_900\.png\): Partition 'validation' is neither 'train' nor 'test'.*data\.train_value",
        ),
        (["MHIST_901.png", "", "5", "train"], r"line 3 \(MHIST_901\.png\): no label in column 'Majority Vote Label'"),
        (
            ["MHIST_902.png", "Unknown", "5", "train"],
            r"line 3: image .*images/MHIST_902\.png not found.*data\.image_dir",
        ),
    ],
)
def test_csv_bad_rows_name_the_file_and_line(tmp_path, cache, bad_row, message):
    good = [["MHIST_000.png", "HP", "5", "train"], ["MHIST_001.png", "SSA", "5", "test"]]
    rows = [good[0], bad_row, good[1], ["MHIST_002.png", "SSA", "5", "train"]]
    root = write_mhist(tmp_path / "m", rows)
    if bad_row[1] == "":  # the image exists; only the label is missing
        save_image(root / "images" / bad_row[0], (0, 0, 0), seed=3)
    if bad_row[3] == "validation":
        save_image(root / "images" / bad_row[0], (0, 0, 0), seed=3)
    with pytest.raises(KdsearchError, match=r"annotations\.csv: 1 bad row\(s\): " + message):
        load_splits(csv_spec(root), cache_dir=cache)


def test_csv_reports_every_bad_row_at_once(tmp_path):
    rows = [
        ["a.png", "HP", "5", "train"],
        ["b.png", "", "5", "train"],
        ["c.png", "SSA", "5", "dev"],
        ["d.png", "SSA", "5", "test"],
    ]
    root = write_mhist(tmp_path / "m", rows)
    with pytest.raises(
        KdsearchError, match=r"3 bad row\(s\): line 3 .*line 3: image .*b\.png not found; line 4 .*'dev'"
    ):
        read_csv_index(root / "annotations.csv", root / "images")


def test_csv_missing_csv_or_image_folder_and_empty_partition(tmp_path, cache):
    with pytest.raises(KdsearchError, match=r"CSV file .*annotations\.csv not found; set data\.csv_file"):
        load_splits(csv_spec(tmp_path), cache_dir=cache)
    root = write_mhist(tmp_path / "m", [["a.png", "HP", "5", "train"], ["b.png", "SSA", "5", "train"]])
    with pytest.raises(KdsearchError, match=r"no rows with Partition = 'test', so the test split is empty"):
        load_splits(csv_spec(root), cache_dir=cache)
    with pytest.raises(KdsearchError, match=r"image folder .*pics not found; set data\.image_dir"):
        load_splits(csv_spec(root, image_dir="pics"), cache_dir=cache)


def test_csv_corrupt_image_is_skipped_when_asked(tmp_path, cache):
    root = write_mhist(tmp_path / "m")
    (root / "images" / "MHIST_005.png").write_bytes(b"broken")
    with pytest.raises(KdsearchError, match=r"1 unreadable image\(s\).*MHIST_005\.png"):
        load_splits(csv_spec(root), cache_dir=cache)
    splits = load_splits(csv_spec(root, skip_unreadable=True), cache_dir=cache)
    assert len(splits.skipped) == 1 and len(splits.train) + len(splits.val) == 29


# ------------------------------------------------------------------------------------------
# cifar10 (python-pickle batches)
# ------------------------------------------------------------------------------------------


def test_cifar10_batches_load_in_chw_order(tmp_path, cache):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", py2=True)
    spec = DataSpec(
        source="cifar10",
        root=tmp_path / "data",
        val_size=8,
        labeled=20,
        unlabeled=12,
        mean=[0.0, 0.0, 0.0],
        std=[1.0, 1.0, 1.0],
    )
    splits = load_splits(spec, cache_dir=cache)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (32, 8, 6)
    assert splits.train.x.shape == (32, 3, 32, 32) and splits.in_channels == 3 and splits.image_size == 32
    assert splits.num_classes == 10 and splits.class_names == [f"class{i}" for i in range(10)]
    first_test = splits.test.x[0]  # the 41st image: R = 40, G = 100, B = 200
    assert torch.allclose(first_test[:, 0, 0], torch.tensor([40, 100, 200]) / 255.0)
    assert splits.test.y.tolist() == [(40 + j) % 10 for j in range(6)]
    assert splits.cache_hit is None  # native size: nothing to decode
    assert load_splits(spec, cache_dir=cache).fingerprint == splits.fingerprint


def test_cifar10_resized_gray_and_limited_without_meta(tmp_path, cache):
    root = write_cifar(tmp_path / "batches", meta=False)
    spec = DataSpec(
        source="cifar10",
        root=root,
        val_size=0.25,
        labeled=10,
        unlabeled=5,
        train_limit=30,
        test_limit=4,
        image_size=16,
        channels=1,
    )
    splits = load_splits(spec, cache_dir=cache)
    assert splits.class_names == CIFAR10_CLASSES
    assert (len(splits.train), len(splits.val), len(splits.test)) == (22, 8, 4)
    assert splits.train.x.shape[1:] == (1, 16, 16)
    assert splits.cache_hit is False and load_splits(spec, cache_dir=cache).cache_hit is True


def test_cifar10_missing_or_foreign_files_are_reported(tmp_path, cache):
    with pytest.raises(KdsearchError, match=r"no CIFAR-10 batches .*data\.download = true"):
        load_splits(DataSpec(source="cifar10", root=tmp_path), cache_dir=cache)
    root = write_cifar(tmp_path / "c")
    (root / "data_batch_4").unlink()
    with pytest.raises(KdsearchError, match=r"data_batch_4 is missing"):
        load_splits(DataSpec(source="cifar10", root=root), cache_dir=cache)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "data_batch_4").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(KdsearchError, match=r"data_batch_4 is not a CIFAR-10 python batch .*refusing"):
        load_splits(DataSpec(source="cifar10", root=root), cache_dir=cache)


def test_cifar10_download_flag_uses_torchvision_only_when_asked(tmp_path, monkeypatch):
    calls = []

    def fake_download(root: Path) -> Path:
        calls.append(root)
        return write_cifar(root / "cifar-10-batches-py")

    monkeypatch.setattr(cifar10_module, "download_cifar10", fake_download)
    with pytest.raises(KdsearchError, match="no CIFAR-10 batches"):
        find_cifar10_folder(tmp_path)
    assert calls == []
    splits = load_splits(
        DataSpec(source="cifar10", root=tmp_path, download=True, val_size=4, labeled=4, unlabeled=4),
        cache_dir=tmp_path / "cache",
    )
    assert calls == [tmp_path] and len(splits.test) == 6
    load_splits(DataSpec(source="cifar10", root=tmp_path, download=True, val_size=4, labeled=4, unlabeled=4))
    assert len(calls) == 1  # already there: no second download


@pytest.mark.parametrize(
    ("download", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), (True, "FashionMNIST")]
)
def test_idx_download_fetches_the_named_dataset_once(tmp_path, monkeypatch, download, folder):
    """data.download names the IDX dataset; torchvision's class of that name fetches it into root/<class>/raw
    (faked here: no network), a second load finds it there, and files already in root are used as they are."""
    import torchvision.datasets

    calls = []

    def fake_dataset(name: str):
        def fetch(root: str, train: bool, download: bool) -> None:
            calls.append((name, train))
            raw = Path(root) / name / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(0)
            for part, n in (("train", 60), ("t10k", 20)) if train else ():
                labels = rng.integers(0, 3, n)
                write_idx(raw / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
                write_idx(raw / f"{part}-labels-idx1-ubyte.gz", labels)

        return fetch

    for name in ("MNIST", "FashionMNIST"):
        monkeypatch.setattr(torchvision.datasets, name, fake_dataset(name))
    spec = DataSpec(source="idx", root=tmp_path, download=download, val_size=10, labeled=20, unlabeled=0)
    splits = load_splits(spec, cache_dir=tmp_path / "cache")
    assert {name for name, _ in calls} == {folder} and len(splits.test) == 20
    load_splits(spec)
    assert len(calls) == 2  # train and test once; the second load found the files
    assert (tmp_path / folder / "raw" / "train-images-idx3-ubyte.gz").is_file()


def test_a_failed_download_is_one_message(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root: str, train: bool, download: bool) -> None:
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\n<urlopen error [Errno -2] Name or service not known>"
        )

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(
        KdsearchError, match=r"could not download MNIST into .* \(<urlopen error .*\); check the internet"
    ):
        load_splits(DataSpec(source="idx", root=tmp_path / "mnist", download="mnist"))


def test_idx_download_is_skipped_when_root_holds_the_files(idx_dataset, monkeypatch):
    monkeypatch.setattr(idx_module, "download_idx", lambda root, dataset: pytest.fail("downloaded although present"))
    splits = load_splits(
        DataSpec(source="idx", root=idx_dataset, download="mnist", val_size=20, labeled=50, unlabeled=0)
    )
    assert len(splits.test) == 100


# ------------------------------------------------------------------------------------------
# idx with the new options, sizes, spec validation
# ------------------------------------------------------------------------------------------


def test_idx_can_be_resized_to_three_channels(idx_dataset, cache):
    spec = DataSpec(root=idx_dataset, val_size=80, labeled=40, unlabeled=100, image_size=32, channels=3)
    splits = load_splits(spec, cache_dir=cache)
    assert splits.train.x.shape == (320, 3, 32, 32) and splits.cache_hit is False
    plain = load_splits(DataSpec(root=idx_dataset, val_size=80, labeled=40, unlabeled=100), cache_dir=cache)
    assert plain.cache_hit is None and plain.fingerprint != splits.fingerprint
    assert torch.equal(plain.train.y, splits.train.y)  # same rows, only resized


def test_sizes_and_all_labeled():
    assert resolve_size(0.1, 2175) == 218 and resolve_size(0.001, 10) == 1 and resolve_size(7, 10) == 7
    labeled, unlabeled = student_subsets(10, 0, 3, seed=0)
    assert len(labeled) == 7 and len(unlabeled) == 3
    with pytest.raises(KdsearchError, match="leaves no labeled images"):
        student_subsets(10, 0, 10, seed=0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"file_column": "name"}, "data: file_column is only read with source = 'csv' (source is 'idx')"),
        (
            {"source": "image_folder", "root": "/d", "train_limit": 5},
            "train_limit is only read with source = 'idx' or 'cifar10'",
        ),
        (
            {"source": "image_folder", "root": "/d", "download": True},
            "download is only read with source = 'idx' or 'cifar10'",
        ),
        ({"source": "cifar10", "root": "/d", "download": "mnist"}, "download = 'mnist' names an IDX dataset"),
        ({"download": "emnist"}, "Input should be 'fashion_mnist' or 'mnist'"),
        ({"test_size": 0.2}, "test_size is only read with source = 'image_folder' or 'csv'"),
        ({"source": "csv"}, "root: source = 'csv' needs root"),
        ({"val_size": 1.0}, "data.val_size: 1.0 is not a fraction in (0, 1)"),
        ({"val_size": 0}, "data.val_size: 0 is not a count >= 1"),
        ({"source": "image_folder", "root": "/d", "mean": [0.5]}, "mean and std: give both"),
        ({"source": "image_folder", "root": "/d", "mean": [0.5], "std": [0.2]}, "one value per channel (3)"),
        (
            {"source": "cifar10", "root": "/d", "mean": [125.3, 123.0, 113.9], "std": [0.2] * 3},
            "divide 0-255 values by 255",
        ),
        (
            {"source": "csv", "root": "/d", "test_size": 0.2},
            "test_size: the test split comes from the column 'Partition'",
        ),
        ({"source": "image_folder", "root": "/d", "channels": 2}, "data.channels"),
        ({"source": "imagenet"}, "data.source"),
    ],
)
def test_data_spec_fields_are_validated_per_source(data, message):
    with pytest.raises(
        KdsearchError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.").replace("[", r"\[")
    ):
        spec_from_dict({"data": data}, source="my.toml")


def test_default_data_spec_is_still_fashion_mnist_and_round_trips():
    d = DataSpec()
    assert d.source == "idx" and d.val_size == 5000 and d.labeled == 2000 and d.resolved_channels() == 1
    spec = spec_from_dict({"data": {"source": "csv", "root": "/m", "image_size": 224, "val_size": 0.1, "labeled": 0}})
    assert spec_from_dict(spec.model_dump(mode="json")) == spec  # a stored study spec loads back


def test_mnist_download_with_the_fashion_mnist_root_is_refused(fashion_root):
    with pytest.raises(KdsearchError, match=r'data.download = "mnist" but data.root is .* which holds Fashion-MNIST'):
        load_splits(DataSpec(source="idx", root=fashion_root, download="mnist"))
