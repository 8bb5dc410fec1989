"""Your own data: `data.source = "python"` (a factory returning datasets, or datasets handed over in
Python) and `data.source = "torchvision"`. Everything is made here, in memory or in tmp_path; nothing
is downloaded."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image
from torch.utils.data import TensorDataset

from kdsearch.config.spec import DataSpec
from kdsearch.data import ImageStore, load_splits
from kdsearch.errors import KdsearchError

FACTORIES = '''
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset


def tensors(n, seed=0, channels=1, size=8, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return TensorDataset(x, torch.arange(n) % classes)


def as_dict(seed=0):
    return {"train": tensors(40, seed), "test": tensors(10, seed + 100), "classes": ["a", "b", "c"]}


def as_tuple():
    return tensors(40), tensors(10, seed=1)


def train_only():
    return {"train": tensors(50)}


def from_file(path):
    a = np.load(path)
    return {"train": TensorDataset(torch.from_numpy(a["x"]), torch.from_numpy(a["y"]))}


def pil_images():
    """RGB, RGBA and grayscale images of three widths."""
    modes = ["RGB", "RGBA", "L"]
    return {"train": [(Image.new(modes[i % 3], (8 + i % 3, 8), color=(i * 10) if i % 3 == 2 else (i * 10, 0, 0)), i % 2)
                      for i in range(24)]}


def raises():
    raise TypeError("no data today\\nsecond line")


def returns_int():
    return 3


not_callable = [1, 2]
'''


@pytest.fixture
def factories(tmp_path, monkeypatch) -> str:
    """A module of data factories in tmp_path, importable by its (unique) name, which is returned."""
    name = f"kd_factories_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def py_spec(**fields) -> DataSpec:
    return DataSpec(**({"source": "python", "val_size": 4, "labeled": 0, "unlabeled": 0} | fields))


def uint8_items(n: int, seed: int = 0, shape: tuple[int, ...] = (1, 8, 8), classes: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8), torch.arange(n) % classes)


# ------------------------------------------------------------------------------------------
# a factory named by import path
# ------------------------------------------------------------------------------------------


def test_a_factory_of_tensor_datasets_gives_the_splits(factories, tmp_path):
    spec = py_spec(factory=f"{factories}:as_dict", val_size=8, channels=1, mean=[0.0], std=[1.0])
    splits = load_splits(spec, cache_dir=tmp_path / "cache")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (32, 8, 10)
    assert (splits.in_channels, splits.image_size, splits.num_classes) == (1, 8, 3)
    assert splits.class_names == ["a", "b", "c"]
    test = uint8_items(10, seed=100)
    assert torch.equal(splits.test.y, test.tensors[1])
    assert torch.equal(splits.test.x, test.tensors[0].float() / 255)  # mean 0, std 1: the pixels on [0, 1]
    assert splits.cache_hit is False and not splits.streaming


def test_missing_splits_are_carved_with_seeds(factories, tmp_path):
    with_test = load_splits(py_spec(factory=f"{factories}:as_tuple"), cache_dir=tmp_path / "cache")
    assert (len(with_test.train), len(with_test.val), len(with_test.test)) == (36, 4, 10)
    assert with_test.class_names == ["0", "1", "2"]
    train_only = load_splits(py_spec(factory=f"{factories}:train_only", val_size=5), cache_dir=tmp_path / "cache")
    assert (len(train_only.train), len(train_only.val), len(train_only.test)) == (40, 5, 5)  # test_size 0.1
    again = load_splits(py_spec(factory=f"{factories}:train_only", val_size=5), cache_dir=tmp_path / "cache")
    assert torch.equal(again.test.y, train_only.test.y) and torch.equal(again.val.x, train_only.val.x)
    sized = load_splits(
        py_spec(factory=f"{factories}:train_only", val_size=5, test_size=20), cache_dir=tmp_path / "cache"
    )
    assert len(sized.test) == 20


def test_pil_images_of_mixed_sizes_need_image_size(factories, tmp_path):
    splits = load_splits(py_spec(factory=f"{factories}:pil_images", image_size=6, val_size=2), cache_dir=tmp_path / "c")
    assert (splits.in_channels, splits.image_size, splits.train.x.shape[1:]) == (3, 6, (3, 6, 6))  # RGBA, L → RGB
    with pytest.raises(
        KdsearchError, match=r"^train item 1 is 8×9 pixels but train item 0 is 8×8: .*set data.image_size"
    ):
        load_splits(py_spec(factory=f"{factories}:pil_images", val_size=2), cache_dir=tmp_path / "c")


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        ("nowhere_at_all:load", r"data.factory = 'nowhere_at_all:load': no module named 'nowhere_at_all'"),
        ("{m}:missing", r"data.factory = '{m}:missing': .* has no attribute 'missing'; it defines: .*as_dict"),
        ("{m}:raises", r"^data.factory = '{m}:raises' raised TypeError: no data today$"),
        ("{m}:returns_int", r"^data.factory = '{m}:returns_int' returned an int \(3\); expected a dict \{'train'"),
        ("{m}:not_callable", r"data.factory = '{m}:not_callable' is a list of 2, not a function"),
    ],
)
def test_factory_problems_are_one_line(factories, tmp_path, factory, match):
    with pytest.raises(KdsearchError, match=match.replace("{m}", factories)):
        load_splits(py_spec(factory=factory.replace("{m}", factories)), cache_dir=tmp_path / "cache")


def test_without_factory_or_datasets_the_python_source_says_what_to_set(tmp_path):
    with pytest.raises(KdsearchError, match=r'data.source = "python" needs data.factory = "package.module:function"'):
        load_splits(py_spec(), cache_dir=tmp_path / "cache")


def test_the_cache_follows_the_items_not_the_factory_name(factories, tmp_path):
    """Same factory, same args: a changed data file is decoded again, an unchanged one is a cache hit."""
    rng = np.random.default_rng(0)
    data = tmp_path / "arrays.npz"
    x, y = rng.integers(0, 256, (30, 3, 8, 8), dtype=np.uint8), np.arange(30) % 2
    np.savez(data, x=x, y=y)
    spec = py_spec(factory=f"{factories}:from_file", args={"path": str(data)}, image_size=12)
    cache = tmp_path / "cache"
    first = load_splits(spec, cache_dir=cache)
    again = load_splits(spec, cache_dir=cache)
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert again.fingerprint == first.fingerprint and torch.equal(again.train.x, first.train.x)
    x[7, 0, 0, 0] ^= 1  # one pixel of one image
    np.savez(data, x=x, y=y)
    pixel = load_splits(spec, cache_dir=cache)
    assert pixel.cache_hit is False and pixel.fingerprint != first.fingerprint
    y[3] = 1 - y[3]  # one label
    np.savez(data, x=x, y=y)
    label = load_splits(spec, cache_dir=cache)
    assert label.cache_hit is False and label.fingerprint not in (first.fingerprint, pixel.fingerprint)
    assert len(list(cache.glob("*.pt"))) == 3
    # the factory's args (here a seed) change the data, hence the key
    seeds = [load_splits(py_spec(factory=f"{factories}:as_dict", args={"seed": s}), cache_dir=cache) for s in (1, 2, 1)]
    assert [s.cache_hit for s in seeds] == [False, False, True]
    assert seeds[0].fingerprint != seeds[1].fingerprint and seeds[0].fingerprint == seeds[2].fingerprint


# ------------------------------------------------------------------------------------------
# items: what an image and a label may be, and what is refused
# ------------------------------------------------------------------------------------------


def test_arrays_hw_and_float_images_become_the_same_uint8_pixels(tmp_path):
    base = uint8_items(20, shape=(8, 8))
    pixels, labels = base.tensors
    as_float = [(pixels[i].numpy().astype(np.float32) / 255, np.int64(labels[i])) for i in range(20)]  # H×W, [0, 1]
    a = load_splits(py_spec(), cache_dir=tmp_path / "cache", datasets={"train": base})
    b = load_splits(py_spec(), cache_dir=tmp_path / "cache", datasets={"train": as_float})
    assert b.in_channels == 1 and b.image_size == 8
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    rgb = load_splits(py_spec(channels=3), cache_dir=tmp_path / "cache", datasets={"train": base})
    assert rgb.train.x.shape[1] == 3


GOOD = (torch.zeros(1, 4, 4, dtype=torch.uint8), 0)


@pytest.mark.parametrize(
    ("item", "match"),
    [
        (("a picture", 0), r"^train item 1: image is a str, expected a PIL image or a CHW/HW tensor or array$"),
        ((GOOD[0], 0, "extra"), r"^train item 1 is a tuple of 3, expected an \(image, label\) pair$"),
        ((GOOD[0], -1), r"^train item 1: label -1 is negative"),
        ((GOOD[0], 1.5), r"^train item 1: label is a float \(1.5\), expected an integer class number"),
        (
            (GOOD[0], torch.tensor([1, 2])),
            r"^train item 1: label is an int64 tensor of shape \(2,\), expected an integer",
        ),
        (
            (torch.zeros(2, 4, 4, dtype=torch.uint8), 0),
            r"^train item 1: image is a uint8 tensor of shape \(2, 4, 4\): 2 chan",
        ),
        (
            (np.zeros((4, 4, 4), np.uint8), 0),
            r"^train item 1: image is a uint8 array of shape \(4, 4, 4\): 4 channels, .*\(RGB\)$",
        ),
        ((np.zeros((8, 8, 3), np.uint8), 0), r"^train item 1: .*: 8 channels, .*is it H×W×C\? move the channels first"),
        ((torch.full((1, 4, 4), 2.0), 0), r"^train item 1: float image values run from 2 to 2, expected \[0, 1\]"),
        ((np.full((4, 4), 300, np.int64), 0), r"^train item 1: int64 image values run from 300 to 300, expected 0-255"),
        (
            (torch.zeros(4, dtype=torch.uint8), 0),
            r"^train item 1: image is a uint8 tensor of shape \(4,\), expected a PIL",
        ),
        ((torch.zeros(1, 4, 6, dtype=torch.uint8), 0), r"^train item 1 is 4×6 pixels but train item 0 is 4×4"),
    ],
)
def test_a_bad_item_is_one_line_naming_its_index(tmp_path, item, match):
    with pytest.raises(KdsearchError, match=match):
        load_splits(py_spec(), cache_dir=tmp_path / "cache", datasets={"train": [GOOD, item] + [GOOD] * 10})


def test_labels_must_fit_the_class_names_and_splits_must_be_datasets(tmp_path):
    items = [GOOD] * 6 + [(GOOD[0], 2)] + [GOOD] * 6
    with pytest.raises(KdsearchError, match=r"^train item 6: label 2 is out of range for the 2 class names"):
        load_splits(py_spec(), cache_dir=tmp_path / "c", datasets={"train": items, "classes": ["no", "yes"]})
    with pytest.raises(KdsearchError, match=r"^test item 0: label 2 is out of range"):
        given = {"train": items[:6], "test": items[6:], "classes": ["no", "yes"]}
        load_splits(py_spec(), cache_dir=tmp_path / "c", datasets=given)
    with pytest.raises(KdsearchError, match=r"returned a dict with keys 'train', 'labels'; expected a dict"):
        load_splits(py_spec(), cache_dir=tmp_path / "c", datasets={"train": items, "labels": []})
    with pytest.raises(KdsearchError, match=r"the test dataset of the datasets handed over from Python is empty"):
        load_splits(py_spec(), cache_dir=tmp_path / "c", datasets=(items, []))
    with pytest.raises(KdsearchError, match=r"the train dataset .* is int, expected a map-style dataset"):
        load_splits(py_spec(), cache_dir=tmp_path / "c", datasets=(7, items))


def test_class_names_come_from_classes_or_the_datasets_attribute(tmp_path):
    class Named(list):
        classes = ["zero", "one", "two", "three"]

    splits = load_splits(
        py_spec(), cache_dir=tmp_path / "c", datasets={"train": Named([GOOD] * 12 + [(GOOD[0], 1)] * 12)}
    )
    assert splits.class_names == ["zero", "one", "two", "three"] and splits.num_classes == 4
    bare = load_splits(py_spec(), cache_dir=tmp_path / "c", datasets={"train": [GOOD] * 12 + [(GOOD[0], 4)] * 12})
    assert bare.class_names == ["0", "1", "2", "3", "4"] and bare.num_classes == 5


# ------------------------------------------------------------------------------------------
# datasets handed over in Python, streaming
# ------------------------------------------------------------------------------------------


def test_datasets_handed_over_need_no_factory(tmp_path):
    train, val, test = uint8_items(30), uint8_items(6, seed=1), uint8_items(8, seed=2)
    splits = load_splits(py_spec(), cache_dir=tmp_path / "c", datasets={"train": train, "val": val, "test": test})
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 6, 8)
    three = load_splits(py_spec(), cache_dir=tmp_path / "c", datasets=(train, val, test))
    assert three.fingerprint == splits.fingerprint and three.cache_hit
    with pytest.raises(KdsearchError, match=r"datasets were handed over in Python but data.source is 'idx'"):
        load_splits(DataSpec(val_size=4), cache_dir=tmp_path / "c", datasets={"train": train})


def test_streamed_python_data_gives_the_in_memory_tensors(tmp_path):
    data = {"train": uint8_items(60, shape=(3, 10, 10)), "test": uint8_items(12, seed=5, shape=(3, 10, 10))}
    in_memory = load_splits(py_spec(image_size=8, val_size=10), cache_dir=tmp_path / "c", datasets=data)
    streamed = load_splits(
        py_spec(image_size=8, val_size=10, stream="always", loader_workers=1), cache_dir=tmp_path / "c", datasets=data
    )
    assert "streaming from the datasets with 1 loader workers" in streamed.streaming and streamed.cache_hit is None
    for name in ("train", "val", "test"):
        a, b = getattr(in_memory, name), getattr(streamed, name)
        assert isinstance(b.x, ImageStore) and isinstance(b.x, torch.utils.data.Dataset) and b.x.shape == a.x.shape
        assert torch.equal(a.y, b.y) and torch.equal(b.x[:], a.x)
    assert torch.equal(torch.cat(list(streamed.train.x.split(16))), in_memory.train.x)  # through a loader worker
    rows = torch.tensor([3, 0, 3])
    assert torch.equal(streamed.train.x[rows], in_memory.train.x[rows])
    # the streamed fingerprint identifies the items: same data, same key; one changed pixel, another
    again = load_splits(py_spec(image_size=8, val_size=10, stream="always"), cache_dir=tmp_path / "c", datasets=data)
    assert again.fingerprint == streamed.fingerprint
    data["train"].tensors[0][0, 0, 0, 0] ^= 1
    changed = load_splits(py_spec(image_size=8, val_size=10, stream="always"), cache_dir=tmp_path / "c", datasets=data)
    assert changed.fingerprint != streamed.fingerprint


def test_python_data_above_the_budget_streams(tmp_path):
    data = {"train": uint8_items(300, shape=(3, 32, 32))}  # 3.5 MiB as float32
    splits = load_splits(py_spec(memory_budget_mb=1, loader_workers=0), cache_dir=tmp_path / "c", datasets=data)
    assert splits.streaming.startswith("300 images exceed memory_budget_mb = 1") and isinstance(
        splits.val.x, ImageStore
    )
    with pytest.raises(
        KdsearchError, match=r'exceeds data.memory_budget_mb = 1.*or set data.stream = "auto" to stream it'
    ):
        load_splits(py_spec(memory_budget_mb=1, stream="never"), cache_dir=tmp_path / "c", datasets=data)


# ------------------------------------------------------------------------------------------
# torchvision
# ------------------------------------------------------------------------------------------


def tv_spec(tmp_path, **fields) -> DataSpec:
    return DataSpec(
        **({"source": "torchvision", "root": tmp_path / "tv", "val_size": 6, "labeled": 0, "unlabeled": 0} | fields)
    )


def test_torchvision_fakedata_has_its_test_split_carved(tmp_path):
    spec = tv_spec(tmp_path, dataset="FakeData", args={"size": 60, "image_size": [3, 8, 8], "num_classes": 3})
    splits = load_splits(spec, cache_dir=tmp_path / "c")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48, 6, 6)
    assert (splits.in_channels, splits.image_size) == (3, 8) and splits.num_classes <= 3
    again = load_splits(spec, cache_dir=tmp_path / "c")
    assert again.cache_hit and again.fingerprint == splits.fingerprint


class TinyDigits(torch.utils.data.Dataset):
    """A torchvision-like dataset taking train=: grayscale PIL images, random, made on the spot."""

    classes = ["zero", "one"]
    built: list[dict] = []

    def __init__(self, root, train=True, transform=None, download=False):
        TinyDigits.built.append({"root": root, "train": train, "download": download})
        g = torch.Generator().manual_seed(0 if train else 1)
        self.x = torch.randint(0, 256, (30 if train else 10, 6, 6), generator=g, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return Image.fromarray(self.x[i].numpy()), i % 2


class Absent(TinyDigits):
    def __init__(self, root, train=True, download=False):
        raise RuntimeError("Dataset not found or corrupted.\nYou can use download=True to download it")


def test_torchvision_class_with_train_argument(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "TinyDigits", TinyDigits, raising=False)
    monkeypatch.setattr(TinyDigits, "built", [])
    splits = load_splits(tv_spec(tmp_path, dataset="TinyDigits", image_size=8), cache_dir=tmp_path / "c")
    assert [b["train"] for b in TinyDigits.built] == [True, False]
    assert TinyDigits.built[0]["root"] == str(tmp_path / "tv") and TinyDigits.built[0]["download"] is False
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 10)
    assert splits.class_names == ["zero", "one"] and (splits.in_channels, splits.image_size) == (1, 8)
    with pytest.raises(KdsearchError, match=r"data.args sets train, which kdsearch sets itself"):
        load_splits(tv_spec(tmp_path, dataset="TinyDigits", args={"train": False}), cache_dir=tmp_path / "c")


class TinySplits(TinyDigits):
    """Takes split= and has no test split, like torchvision's ImageNet (train, val)."""

    def __init__(self, root, split="train", download=False):
        from torchvision.datasets.utils import verify_str_arg

        super().__init__(root, train=verify_str_arg(split, "split", ("train", "val")) == "train", download=download)


def test_torchvision_class_with_split_argument_but_no_test_split(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "TinySplits", TinySplits, raising=False)
    monkeypatch.setattr(TinyDigits, "built", [])
    splits = load_splits(tv_spec(tmp_path, dataset="TinySplits", test_size=5), cache_dir=tmp_path / "c")
    assert [b["train"] for b in TinyDigits.built] == [True]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (19, 6, 5) and splits.image_size == 6


def test_torchvision_missing_dataset_and_unknown_name(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "Absent", Absent, raising=False)
    with pytest.raises(
        KdsearchError,
        match=r"^torchvision.datasets.Absent is not in .*tv \(You can use download=True to "
        r"download it\); set data.download = true to fetch it there",
    ):
        load_splits(tv_spec(tmp_path, dataset="Absent"), cache_dir=tmp_path / "c")
    with pytest.raises(
        KdsearchError,
        match=r"data.dataset = 'CIFAR1000' is not a class of torchvision.datasets; "
        r"did you mean CIFAR100, CIFAR10",
    ):
        load_splits(tv_spec(tmp_path, dataset="CIFAR1000"), cache_dir=tmp_path / "c")
    with pytest.raises(KdsearchError, match=r"did you mean FashionMNIST"):
        load_splits(tv_spec(tmp_path, dataset="fashionmnist"), cache_dir=tmp_path / "c")
