"""Dataset sources → ``Splits(train, val, test)`` held in memory as normalized float tensors (or streamed).

Sources (``data.source``):

* ``idx``: the MNIST file layout (Fashion-MNIST, the default study); ``data.download = "mnist"``
  or ``"fashion_mnist"`` fetches one with torchvision.
* ``cifar10``: the CIFAR-10 python-pickle batches (``data_batch_1..5``, ``test_batch``,
  optional ``batches.meta``); ``data.download = true`` fetches them with torchvision.
* ``image_folder``: ``root/<class>/*.png|jpg|jpeg|bmp|webp``, or ``root/train|val|test/<class>/…``.
* ``csv``: an image folder plus a CSV giving each file's label and partition (MHIST layout).

Every source ends as uint8 N×C×H×W tensors, is split with seeds, and is normalized per channel
(``data.mean``/``data.std``, else the training split's statistics). Decoding image files (and
resizing arrays) is done once: the uint8 result is cached on disk, keyed by the file list, sizes,
mtimes and resize settings, so later runs skip it.

Data above ``data.memory_budget_mb`` (or any data with ``data.stream = "always"``) from the
``image_folder`` and ``csv`` sources is not decoded into memory: each split's ``x`` is then an
``ImageStore``, a lazy stand-in for the tensor that decodes the rows asked for (``store[rows]``,
``store.split(n)``, ``store.batches(index_batches)``), through a DataLoader with
``data.loader_workers`` worker processes where it pays off.

Pure where it can be: ``split_indices``, ``student_subsets`` and ``resolve_size`` are deterministic
functions of their arguments. Reading files is ``read_*`` / ``list_*`` / ``decode_*`` / ``load_*``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import math
import os
import pickle
import struct
import tempfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import KdsearchError
from .spec import DEFAULT_FASHION_MNIST_ROOT, DataSpec

log = logging.getLogger(__name__)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLIT_FOLDERS = ("train", "val", "test")
DEFAULT_IMAGE_SIZE = 32  # image_folder and csv, when data.image_size is not given
DEFAULT_TEST_FRACTION = 0.1  # when a test split must be carved and data.test_size is not given
DATA_CACHE_VERSION = 1
MAX_LISTED = 10  # problems named in one error message
STATS_SAMPLE = 2048  # streamed images decoded to estimate mean/std when data.mean/std are not given


@dataclass(eq=False)
class ImageStore:
    """Image files standing in for an N×C×S×S tensor: rows are decoded (and normalized) when indexed.

    ``store[rows]`` (an index tensor, list, slice or int) decodes those rows into a float32 tensor
    on ``device``, normalized with ``mean``/``std`` (uint8 when they are None), with the same PIL
    steps and arithmetic as the in-memory path, so both give identical tensors. ``subset(rows)``
    is another store (nothing decoded); ``split(n)`` and ``batches(index_batches)`` yield decoded
    batches through a DataLoader with ``workers`` processes (in-process when 0).
    """

    files: tuple[str, ...]
    size: int
    channels: int
    mean: Tensor | None = None
    std: Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = 0

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), self.channels, self.size, self.size))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.mean is None else torch.float32

    ndim = 4

    def dim(self) -> int:
        return 4

    def _rows(self, rows: Tensor | Sequence[int] | slice) -> list[int]:
        if isinstance(rows, slice):
            return list(range(len(self.files)))[rows]
        if isinstance(rows, Tensor):
            rows = rows.cpu()
            if rows.dtype == torch.bool:
                rows = rows.nonzero().flatten()
            return rows.tolist()
        return [int(r) for r in rows]

    def subset(self, rows: Tensor | Sequence[int] | slice) -> "ImageStore":
        """The store of the given rows (nothing is decoded)."""
        return replace(self, files=tuple(self.files[i] for i in self._rows(rows)))

    def normalized(self, mean: Tensor, std: Tensor) -> "ImageStore":
        return replace(self, mean=mean, std=std)

    def to(self, device: torch.device | str, *_, **__) -> "ImageStore":
        """The same store, its decoded batches landing on ``device``."""
        return replace(self, device=torch.device(device))

    def decode(self, rows: Sequence[int]) -> Tensor:
        """uint8 images of ``rows`` (CPU); KdsearchError naming the file when one cannot be decoded."""
        files = [self.files[i] for i in rows]
        out, bad = _parallel_fill(len(files), self.channels, self.size, lambda i: decode_image(Path(files[i]), self.size, self.channels))
        if bad:
            i, why = bad[0]
            raise KdsearchError(
                f"cannot decode streamed image {files[i]} ({why}); delete or replace it "
                "(data.skip_unreadable = true leaves out the files that cannot be opened)"
            )
        return torch.from_numpy(out)

    def __getitem__(self, rows: Tensor | Sequence[int] | slice | int) -> Tensor:
        single = isinstance(rows, int) or (isinstance(rows, Tensor) and rows.dim() == 0)
        x = self.decode([int(rows)] if single else self._rows(rows))
        if self.mean is not None:
            c = self.channels
            x = x.float().div_(255).sub_(self.mean.view(1, c, 1, 1)).div_(self.std.view(1, c, 1, 1))
        x = x.to(self.device)
        return x[0] if single else x

    def batches(self, index_batches: Sequence[Sequence[int]] | Tensor) -> "Iterator[Tensor]":
        """Decoded batches of ``index_batches`` in order, on ``device``, decoded ahead by the loader workers."""
        cpu = replace(self, device=torch.device("cpu"))
        batches = [b.tolist() if isinstance(b, Tensor) else list(b) for b in index_batches]
        if self.workers == 0 or len(batches) == 0:
            for b in batches:
                yield cpu[b].to(self.device, non_blocking=True)
            return
        loader = torch.utils.data.DataLoader(
            cpu, sampler=batches, batch_size=None, num_workers=min(self.workers, len(batches)),
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # worker seeds from its own generator: the global RNG (dropout) is untouched
        )  # fmt: skip
        try:
            for x in loader:
                yield x.to(self.device, non_blocking=True)
        except KdsearchError as err:  # torch wraps a worker's error with its traceback: keep the message alone
            message = str(err).strip().splitlines()[-1].split("KdsearchError: ", 1)[-1]
            raise KdsearchError(message) from None

    def split(self, batch_size: int) -> "Iterator[Tensor]":
        """Consecutive decoded chunks of ``batch_size`` rows, like ``Tensor.split``."""
        n = len(self.files)
        return self.batches([range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)])

    def key(self) -> str:
        """Identifies the images: file list (paths, sizes, mtimes), size and channels."""
        return decode_cache_key([Path(f) for f in self.files], {"size": self.size, "channels": self.channels, "stream": True})


def take(x: Tensor | ImageStore, rows: Tensor) -> Tensor | ImageStore:
    """``x[rows]`` for a tensor; the lazy subset for an ``ImageStore`` (nothing is decoded)."""
    return x.subset(rows) if isinstance(x, ImageStore) else x[rows]


@dataclass
class Split:
    """Images ``x`` (N×C×H×W float32, normalized; an ``ImageStore`` when streamed) and integer labels ``y`` (N)."""

    x: Tensor | ImageStore
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    def in_memory(self, device: torch.device | str, budget_mb: float) -> "Split":
        """This split on ``device``; a streamed one is decoded once into a tensor when it fits ``budget_mb``
        (so evaluating it every epoch reads no file), else it stays streamed."""
        split = self.to(device)
        if not isinstance(split.x, ImageStore) or split.x.shape.numel() * 4 > budget_mb * 2**20:
            return split
        return Split(torch.cat(list(split.x.split(1024))), split.y)


@dataclass
class Splits:
    """Train (teacher's training set, student's pool), val (tuning), test (final comparison only).

    ``labeled`` and ``unlabeled`` index ``train``: the student may use the labels of the first,
    and sees the second only through the teacher's soft targets. ``skipped`` lists unreadable
    image files left out (``data.skip_unreadable``); ``cache_hit`` says whether decoded images
    came from the disk cache (None: the source needed no decoding).
    """

    train: Split
    val: Split
    test: Split
    labeled: Tensor
    unlabeled: Tensor
    num_classes: int
    in_channels: int
    image_size: int
    fingerprint: str
    class_names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cache_hit: bool | None = None
    streaming: str = ""  # non-empty when the splits' x are ImageStores (streamed from disk): why and how


@dataclass
class Part:
    """One split as the source gives it: uint8 images ``x`` (N×C×H×W; an ``ImageStore`` when streamed) and int64 labels ``y``."""

    x: Tensor | ImageStore
    y: Tensor


@dataclass
class RawDataset:
    """A source's uint8 data before splitting: ``test``/``val`` None means "carve it from train"."""

    train: Part
    test: Part | None
    val: Part | None
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)
    cache_hit: bool | None = None
    streaming: str = ""  # why and how the images stream from disk ("" : held in memory)


@dataclass
class ImageList:
    """Image files and their labels per split (``train``, optionally ``val``/``test``), not decoded yet."""

    files: dict[str, list[Path]]
    labels: dict[str, list[int]]
    class_names: list[str]
    root: Path


# --------------------------------------------------------------------------------------------
# Pure helpers: sizes, splits, subsets
# --------------------------------------------------------------------------------------------


def resolve_size(size: int | float, n: int) -> int:
    """A count as is, or a fraction in (0, 1) of ``n`` (rounded, at least 1)."""
    if isinstance(size, float):
        return max(1, round(size * n))
    return int(size)


def split_indices(n: int, val_size: int, seed: int, *, name: str = "data.val_size") -> tuple[Tensor, Tensor]:
    """A seeded, disjoint (train, val) partition of ``range(n)``."""
    if val_size >= n:
        raise KdsearchError(f"{name} = {val_size} leaves no training images out of {n}; lower it")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def student_subsets(n_train: int, labeled: int, unlabeled: int, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded, disjoint (labeled, unlabeled) index sets into the training split.

    ``labeled = 0`` means every training image not drawn as unlabeled.
    """
    if labeled == 0:
        if unlabeled >= n_train:
            raise KdsearchError(
                f"data.unlabeled = {unlabeled} leaves no labeled images out of the {n_train} training images "
                "(data.labeled = 0 means all the others); lower data.unlabeled"
            )
        labeled = n_train - unlabeled
    if labeled + unlabeled > n_train:
        raise KdsearchError(
            f"data.labeled + data.unlabeled = {labeled + unlabeled} exceeds the {n_train} training images; lower them"
            " (data.labeled = 0 takes every training image not drawn as unlabeled)"
        )
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + 1))
    return perm[:labeled].sort().values, perm[labeled : labeled + unlabeled].sort().values


def fits_memory_budget(n_images: int, channels: int, size: int, budget_mb: int) -> bool:
    """Whether ``n_images`` float32 C×S×S images fit in ``budget_mb`` MiB."""
    return n_images * channels * size * size * 4 <= budget_mb * 2**20


def check_memory_budget(n_images: int, channels: int, size: int, budget_mb: int, *, fix: str = "") -> None:
    """KdsearchError when ``n_images`` float32 C×S×S images exceed ``budget_mb`` MiB (``fix``: one more way out)."""
    if fits_memory_budget(n_images, channels, size, budget_mb):
        return
    need = n_images * channels * size * size * 4
    budget = budget_mb * 2**20
    fits = int(math.sqrt(budget / max(1, n_images * channels * 4)))
    hint = f"data.image_size = {fits} would fit" if fits >= 4 else "no image size fits"
    raise KdsearchError(
        f"the dataset exceeds data.memory_budget_mb = {budget_mb}: {n_images} images of {channels}×{size}×{size} "
        f"need {math.ceil(need / 2**20)} MiB as float32 tensors; raise data.memory_budget_mb or lower "
        f"data.image_size ({hint}){fix or '. Only the image_folder and csv sources stream data larger than memory'}"
    )


def _sorted_names(names: set[str] | Sequence[str]) -> list[str]:
    """Class names in order: numerically when all are integers, else alphabetically."""
    names = set(names)
    if all(n.strip().lstrip("-").isdigit() for n in names):
        return sorted(names, key=lambda n: int(n))
    return sorted(names)


def _listing(items: Sequence[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = "; ".join(items[:MAX_LISTED])
    return shown + (f"; … and {total - MAX_LISTED} more" if total > MAX_LISTED else "")


# --------------------------------------------------------------------------------------------
# idx (MNIST layout)
# --------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into an array; KdsearchError if it is not a valid one."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise KdsearchError(f"cannot read {path}: {err}; re-install or re-download the dataset") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise KdsearchError(f"{path} is not an IDX file (bad magic number); point data.root at the original files")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise KdsearchError(f"{path} is truncated (header); re-install or re-download the dataset")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise KdsearchError(
            f"{path} is truncated or corrupt: header says {shape} ({expected} bytes), file has {len(raw) - header}; "
            "re-install or re-download the dataset"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def find_idx_file(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem, root / "raw" / f"{stem}.gz", root / "raw" / stem):
        if candidate.is_file():
            return candidate
    raise KdsearchError(
        f"dataset file {stem}[.gz] not found in {root}. For Fashion-MNIST run "
        "`sudo apt-get install dataset-fashion-mnist` (installs /usr/share/datasets/fashion-mnist), "
        "or pass --data-root DIR (data.root in the spec) for a folder holding the four IDX files, "
        'or set data.download = "mnist" or "fashion_mnist" to fetch them with torchvision (needs internet)'
    )


IDX_DOWNLOADS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}  # data.download value: torchvision dataset class


def has_idx_files(folder: Path) -> bool:
    """Whether ``folder`` (or its ``raw/``) holds all four IDX files."""
    try:
        return all(find_idx_file(folder, stem) for stem in IDX_FILES.values())
    except KdsearchError:
        return False


def fetch_with_torchvision(class_name: str, root: Path, what: str) -> None:
    """Download torchvision's dataset ``class_name`` (train and test) into ``root``; a failure (no
    internet, a checksum, a full disk) is one KdsearchError naming ``what`` to put there instead."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, class_name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]  # torchvision's reason comes last
        raise KdsearchError(
            f"could not download {class_name} into {root} ({reason}); check the internet connection, "
            f"or put {what} in {root} yourself and set data.download = false"
        ) from None


def download_idx(root: Path, dataset: str) -> Path:
    """For users with internet: fetch ``dataset`` (a key of ``IDX_DOWNLOADS``) with torchvision into
    ``root``; returns the IDX folder, ``root/<torchvision class>/raw``."""
    fetch_with_torchvision(IDX_DOWNLOADS[dataset], root, "the four IDX files (train-images-idx3-ubyte.gz, ...)")
    return root / IDX_DOWNLOADS[dataset] / "raw"


def idx_folder(root: Path, download: bool | str) -> Path:
    """The folder holding the IDX files. Without ``download``: ``root``. With it: torchvision's folder
    for that dataset under ``root`` if it is there, else ``root`` when it holds IDX files itself, else
    the dataset fetched into ``root``. ``download = true`` means Fashion-MNIST, the default data."""
    if not download:
        return root
    dataset = "fashion_mnist" if download is True else str(download)
    fetched = root / IDX_DOWNLOADS[dataset] / "raw"
    if has_idx_files(fetched):
        return fetched
    if has_idx_files(root):
        if dataset == "mnist" and root == Path(DEFAULT_FASHION_MNIST_ROOT):
            raise KdsearchError(
                f'data.download = "mnist" but data.root is {root}, which holds Fashion-MNIST; set data.root '
                "(--data-root) to a folder for MNIST, e.g. data/mnist"
            )
        return root
    log.info("data: downloading %s into %s", dataset, root)
    return download_idx(root, dataset)


def read_idx_dataset(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from an MNIST-layout folder."""
    arrays = {key: read_idx(find_idx_file(root, stem)) for key, stem in IDX_FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        where = f"{root}: the {part} files"
        if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
            raise KdsearchError(
                f"{where} hold images of shape {images.shape} ({images.dtype}) and labels of shape {labels.shape}; "
                "expected N×H×W uint8 images and N labels (are the images and labels files swapped?)"
            )
        if len(images) != len(labels):
            raise KdsearchError(f"{where}: {len(images)} images but {len(labels)} labels; the files do not belong together")
        if len(images) == 0:
            raise KdsearchError(f"{where} hold no images")
        if labels.min() < 0:
            raise KdsearchError(f"{where}: labels must be class numbers 0, 1, …; found {int(labels.min())}")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise KdsearchError(
            f"{root}: train images are {arrays['train_images'].shape[1:]} pixels but test images "
            f"{arrays['test_images'].shape[1:]}; the files do not belong together"
        )
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]


# --------------------------------------------------------------------------------------------
# cifar10 (python-pickle batches)
# --------------------------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, numpy arrays) and refuses anything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core → numpy._core
            return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as err:
        raise KdsearchError(f"cannot read {path}: {err}; re-extract cifar-10-python.tar.gz") from None
    except Exception as err:  # noqa: BLE001 - pickle raises many types for foreign or truncated files
        raise KdsearchError(
            f"{path} is not a CIFAR-10 python batch ({type(err).__name__}: {err}); re-extract cifar-10-python.tar.gz"
        ) from None
    if not isinstance(obj, dict):
        raise KdsearchError(f"{path} is not a CIFAR-10 python batch (holds a {type(obj).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file → (uint8 images N×3×32×32, int64 labels N)."""
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        keys = ", ".join(sorted(map(str, batch))) or "none"
        raise KdsearchError(
            f"{path} has no 'data'/'labels' entries (it has {keys}); CIFAR-100 and other layouts are not supported"
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise KdsearchError(
            f"{path}: expected N×3072 uint8 data and N labels, got {data.dtype} {data.shape} and {len(labels)} labels; "
            "re-extract cifar-10-python.tar.gz"
        )
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10_names(folder: Path) -> list[str]:
    """Class names from ``batches.meta``, else the standard CIFAR-10 names."""
    meta = folder / "batches.meta"
    if not meta.is_file():
        return list(CIFAR10_CLASSES)
    names = _unpickle(meta).get("label_names")
    if not names:
        return list(CIFAR10_CLASSES)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def download_cifar10(root: Path) -> Path:
    """For users with internet: fetch CIFAR-10 with torchvision into ``root``; returns the batches folder."""
    fetch_with_torchvision("CIFAR10", root, "the extracted cifar-10-python.tar.gz batches")
    return root / CIFAR10_FOLDER


def find_cifar10_folder(root: Path, *, download: bool = False) -> Path:
    """The folder holding the batches: ``root`` or ``root/cifar-10-batches-py`` (downloaded if asked)."""
    for candidate in (root, root / CIFAR10_FOLDER):
        if (candidate / CIFAR10_TRAIN_BATCHES[0]).is_file():
            return candidate
    if download:
        log.info("data: downloading CIFAR-10 into %s", root)
        return download_cifar10(root)
    raise KdsearchError(
        f"no CIFAR-10 batches (data_batch_1..5, test_batch) in {root} or {root / CIFAR10_FOLDER}; extract "
        "cifar-10-python.tar.gz there and point data.root (--data-root) at it, or set data.download = true "
        "to fetch it with torchvision (needs internet)"
    )


def read_cifar10_dataset(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(train images, train labels, test images, test labels, class names) from a batches folder."""
    parts = []
    for name in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH):
        path = folder / name
        if not path.is_file():
            raise KdsearchError(f"{path} is missing; the CIFAR-10 folder needs data_batch_1..5 and test_batch")
        parts.append(read_cifar10_batch(path))
    train_x = np.concatenate([x for x, _ in parts[:-1]])
    train_y = np.concatenate([y for _, y in parts[:-1]])
    return train_x, train_y, parts[-1][0], parts[-1][1], read_cifar10_names(folder)


# --------------------------------------------------------------------------------------------
# image files: listing (image_folder, csv) and decoding
# --------------------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _class_folders(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]


def list_image_folder(root: Path) -> ImageList:
    """The files of ``root/<class>/…`` or ``root/{train,val,test}/<class>/…`` with their labels.

    Class indices follow the sorted class-folder names (numerically when all are integers).
    """
    root = Path(root)
    if not root.is_dir():
        raise KdsearchError(f"image folder {root} not found; point data.root (--data-root) at the dataset folder")
    split_roots = {s: root / s for s in SPLIT_FOLDERS if (root / s).is_dir()}
    if split_roots and "train" not in split_roots:
        present = ", ".join(f"{s}/" for s in split_roots)
        raise KdsearchError(f"{root} has {present} but no train/ folder; add {root / 'train'} with one folder per class")
    if not split_roots:
        split_roots = {"train": root}
    classes_per_split = {s: {p.name: p for p in _class_folders(folder)} for s, folder in split_roots.items()}
    class_names = _sorted_names(classes_per_split["train"])
    train_root = split_roots["train"]
    if not class_names:
        loose = len(_image_files(train_root)) if train_root.is_dir() else 0
        why = f" ({loose} images lie outside class folders)" if loose else ""
        raise KdsearchError(
            f"{train_root} has no class folders{why}; expected {train_root}/<class>/<image>.png (or .jpg, .jpeg, .bmp, .webp)"
        )
    if len(class_names) < 2:
        raise KdsearchError(f"{train_root} has only one class folder ({class_names[0]}); a classifier needs at least two")
    index = {name: i for i, name in enumerate(class_names)}
    files: dict[str, list[Path]] = {}
    labels: dict[str, list[int]] = {}
    for split, classes in classes_per_split.items():
        unknown = sorted(set(classes) - set(index))
        if unknown:
            raise KdsearchError(
                f"{split_roots[split]} has class folders not in {train_root}: {', '.join(unknown)}; "
                "every class needs training images (add them to train/ or remove the folders)"
            )
        files[split], labels[split] = [], []
        for name in sorted(classes, key=index.__getitem__):
            found = _image_files(classes[name])
            if not found:
                raise KdsearchError(
                    f"class folder {classes[name]} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                    "add images or remove the folder"
                )
            files[split] += found
            labels[split] += [index[name]] * len(found)
    return ImageList(files, labels, class_names, root)


def _under(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


def read_csv_index(
    csv_path: Path,
    image_dir: Path,
    *,
    file_column: str = "Image Name",
    label_column: str = "Majority Vote Label",
    partition_column: str = "Partition",
    train_value: str = "train",
    test_value: str = "test",
) -> ImageList:
    """Files and labels from a CSV (one row per image): a ``train`` and (with a partition column) a ``test`` split.

    Class indices follow the sorted label values. Every bad row (missing label, unknown partition,
    missing file) is reported at once, by line number.
    """
    if not csv_path.is_file():
        raise KdsearchError(f"CSV file {csv_path} not found; set data.csv_file (relative to data.root, or absolute)")
    if not image_dir.is_dir():
        raise KdsearchError(f"image folder {image_dir} not found; set data.image_dir (relative to data.root, or absolute)")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise KdsearchError(f"cannot read {csv_path} as CSV: {err}; save it as UTF-8 comma-separated text") from None
    columns = {"file_column": file_column, "label_column": label_column}
    if partition_column:
        columns["partition_column"] = partition_column
    for setting, column in columns.items():
        if column not in header:
            raise KdsearchError(
                f"{csv_path} has no column {column!r} (data.{setting}); its columns are "
                f"{', '.join(repr(h) for h in header) or 'none'}; set data.{setting} to one of them"
            )
    col = {setting: header.index(column) for setting, column in columns.items()}
    wanted = {train_value: "train", test_value: "test"}
    entries: dict[str, list[tuple[Path, str]]] = {"train": [], "test": []} if partition_column else {"train": []}
    problems: list[str] = []
    fixes: set[str] = set()
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        cells = [c.strip() for c in row] + [""] * (len(header) - len(row))
        name, label = cells[col["file_column"]], cells[col["label_column"]]
        if not name:
            problems.append(f"line {line}: empty {file_column!r}")
            fixes.add(f"fill in the {file_column!r} cells")
            continue
        if not label:
            problems.append(f"line {line} ({name}): no label in column {label_column!r}")
            fixes.add(f"fill in the missing {label_column!r} cells or delete those rows")
        split = "train"
        if partition_column:
            value = cells[col["partition_column"]]
            split = wanted.get(value, "")
            if not split:
                problems.append(
                    f"line {line} ({name}): {partition_column} {value!r} is neither {train_value!r} nor {test_value!r}"
                )
                fixes.add("fix those rows, or set data.train_value / data.test_value to the CSV's values")
        path = image_dir / name
        if not path.is_file():
            problems.append(f"line {line}: image {path} not found")
            fixes.add(f"put the images in {image_dir} or set data.image_dir to their folder")
        if split and label and path.is_file():
            entries[split].append((path, label))
    if problems:
        raise KdsearchError(
            f"{csv_path}: {len(problems)} bad row(s): {_listing(problems)}. Fix: {'; '.join(sorted(fixes))}"
        )
    for split, items in entries.items():
        if not items and partition_column:
            value = train_value if split == "train" else test_value
            raise KdsearchError(
                f"{csv_path} has no rows with {partition_column} = {value!r}, so the {split} split is empty; "
                f"set data.{split}_value to the CSV's value, or partition_column = \"\" to carve a seeded test split"
            )
        if not items:
            raise KdsearchError(f"{csv_path} has no data rows; it needs one row per image")
    class_names = _sorted_names({label for items in entries.values() for _, label in items})
    if len(class_names) < 2:
        raise KdsearchError(
            f"{csv_path}: column {label_column!r} holds one label ({class_names[0]!r}); a classifier needs at least two"
        )
    index = {name: i for i, name in enumerate(class_names)}
    return ImageList(
        {split: [p for p, _ in items] for split, items in entries.items()},
        {split: [index[lab] for _, lab in items] for split, items in entries.items()},
        class_names,
        image_dir,
    )


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file → uint8 C×size×size (``convert("RGB"|"L")``, bilinear resize to a square)."""
    with Image.open(path) as img:
        img = img.convert("RGB" if channels == 3 else "L")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_workers(n: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores, n // 32))


def _parallel_fill(n: int, channels: int, size: int, work: Callable[[int], np.ndarray]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """``out[i] = work(i)`` for every i (threads: PIL releases the GIL); failures are returned, not raised."""
    out = np.zeros((n, channels, size, size), dtype=np.uint8)
    bad: list[tuple[int, str]] = []

    def one(i: int) -> None:
        try:
            out[i] = work(i)
        except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt files
            bad.append((i, f"{type(err).__name__}: {err}".splitlines()[0]))

    workers = _decode_workers(n)
    if workers == 1:
        for i in range(n):
            one(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(n)))
    return out, sorted(bad)


def decode_images(paths: Sequence[Path], size: int, channels: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode ``paths`` into uint8 N×C×size×size; unreadable files stay zero and come back as (index, reason)."""
    return _parallel_fill(len(paths), channels, size, lambda i: decode_image(paths[i], size, channels))


def _probe_image(path: Path) -> None:
    with Image.open(path) as img:
        img.load()  # a full decode: verify() alone passes truncated JPEGs that fail later, mid-trial


def probe_images(paths: Sequence[Path]) -> list[tuple[int, str]]:
    """(index, reason) of the files PIL cannot decode (each decoded once, nothing kept) — for streaming."""
    bad: list[tuple[int, str]] = []

    def one(i: int) -> None:
        try:
            _probe_image(paths[i])
        except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt files
            bad.append((i, f"{type(err).__name__}: {err}".splitlines()[0]))

    workers = _decode_workers(len(paths))
    if workers == 1:
        for i in range(len(paths)):
            one(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(paths))))
    return sorted(bad)


def conform_images(x: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize/convert uint8 N×C×H×W arrays with the same PIL steps as image files."""
    n, c, h, w = x.shape
    if (c, h, w) == (channels, size, size):
        return x
    mode = "RGB" if channels == 3 else "L"

    def one(i: int) -> np.ndarray:
        img = Image.fromarray(x[i, 0] if c == 1 else x[i].transpose(1, 2, 0)).convert(mode)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    out, bad = _parallel_fill(n, channels, size, one)
    if bad:
        raise KdsearchError(f"cannot resize image {bad[0][0]}: {bad[0][1]}")
    return out


# --------------------------------------------------------------------------------------------
# the decoded-image disk cache
# --------------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """kdsearch's cache folder: ``$KDSEARCH_CACHE``, else ``~/.cache/kdsearch``."""
    env = os.environ.get("KDSEARCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kdsearch"


def data_cache_dir() -> Path:
    """Default folder of decoded-image caches: ``<default_cache_root()>/data``."""
    return default_cache_root() / "data"


def decode_cache_key(files: Sequence[Path], settings: dict) -> str:
    """Hash of the file list (absolute paths, sizes, mtimes) and the decode settings."""
    h = hashlib.sha256(json.dumps({"version": DATA_CACHE_VERSION, "settings": settings}, sort_keys=True).encode())
    for path in files:
        try:
            st = path.stat()
            h.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()[:24]


def _read_cache(path: Path, n: int) -> tuple[Tensor, list[tuple[int, str]]] | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        images, bad = entry["images"], [(int(i), str(r)) for i, r in entry["bad"]]
        if entry["version"] != DATA_CACHE_VERSION or images.dtype != torch.uint8 or len(images) != n:
            raise ValueError("stale entry")
        return images, bad
    except Exception as err:  # noqa: BLE001 - a damaged cache entry is rebuilt, never fatal
        log.warning("data: ignoring unreadable cache entry %s (%s); decoding again", path, err)
        return None


def save_atomic(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_cache(path: Path, images: Tensor, bad: list[tuple[int, str]]) -> bool:
    try:
        save_atomic({"version": DATA_CACHE_VERSION, "images": images, "bad": [list(b) for b in bad]}, path)
        return True
    except OSError as err:
        log.warning("data: cannot write the decoded-image cache %s (%s); the next run decodes again", path, err)
        return False


def cached_decode(
    files: Sequence[Path],
    settings: dict,
    n: int,
    build: Callable[[], tuple[np.ndarray, list[tuple[int, str]]]],
    cache_dir: Path | None,
    *,
    keep_failed: bool = True,
) -> tuple[Tensor, list[tuple[int, str]], bool, Path]:
    """``build()`` once per (files, settings): uint8 images and failures, from the disk cache when present.

    Returns (images, failures, cache hit, cache path). With ``keep_failed = False`` a result that
    has failures is not written (the run is about to stop on them).
    """
    from filelock import FileLock

    folder = Path(cache_dir) if cache_dir is not None else data_cache_dir()
    path = folder / f"{decode_cache_key(files, settings)}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock: FileLock | None = FileLock(str(path) + ".lock")
    except OSError:
        lock = None
    if lock is not None:
        lock.acquire()
    try:
        hit = _read_cache(path, n)
        if hit is not None:
            log.info("data: %d decoded images loaded from cache %s (no decoding)", n, path)
            return hit[0], hit[1], True, path
        images, bad = build()
        tensor = torch.from_numpy(images)
        if keep_failed or not bad:
            if _write_cache(path, tensor, bad):
                log.info("data: decoded %d images; cached them in %s", n, path)
        return tensor, bad, False, path
    finally:
        if lock is not None:
            lock.release()


# --------------------------------------------------------------------------------------------
# sources → RawDataset
# --------------------------------------------------------------------------------------------


def _as_nchw(images: np.ndarray) -> Tensor:
    t = torch.from_numpy(np.array(images, copy=True))
    return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def _conform_parts(
    spec: DataSpec, parts: list[Part], files: list[Path], cache_dir: Path | None
) -> tuple[list[Part], bool | None]:
    """Resize/convert array sources when ``image_size``/``channels`` ask for it (disk-cached)."""
    _, c, h, _ = parts[0].x.shape
    size, channels = spec.image_size or h, spec.channels or c
    n = sum(len(p.y) for p in parts)
    check_memory_budget(n, channels, size, spec.memory_budget_mb)
    if (size, channels) == (h, c):
        return parts, None
    settings = {
        "source": spec.source, "size": size, "channels": channels,
        "limits": [spec.train_limit, spec.test_limit], "counts": [len(p.y) for p in parts],
    }  # fmt: skip

    def build() -> tuple[np.ndarray, list[tuple[int, str]]]:
        return conform_images(torch.cat([p.x for p in parts]).numpy(), size, channels), []

    images, _, hit, _ = cached_decode(files, settings, n, build, cache_dir)
    out, start = [], 0
    for p in parts:
        out.append(Part(images[start : start + len(p.y)], p.y))
        start += len(p.y)
    return out, hit


def load_idx(spec: DataSpec, cache_dir: Path | None = None) -> RawDataset:
    root = idx_folder(Path(spec.root), spec.download)
    train_img, train_lab, test_img, test_lab = read_idx_dataset(root)
    if spec.train_limit:
        train_img, train_lab = train_img[: spec.train_limit], train_lab[: spec.train_limit]
    if spec.test_limit:
        test_img, test_lab = test_img[: spec.test_limit], test_lab[: spec.test_limit]
    train = Part(_as_nchw(train_img), torch.from_numpy(train_lab.astype(np.int64)))
    test = Part(_as_nchw(test_img), torch.from_numpy(test_lab.astype(np.int64)))
    files = [find_idx_file(root, stem) for stem in IDX_FILES.values()]
    (train, test), hit = _conform_parts(spec, [train, test], files, cache_dir)
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    return RawDataset(train, test, None, [str(i) for i in range(num_classes)], cache_hit=hit)


def load_cifar10(spec: DataSpec, cache_dir: Path | None = None) -> RawDataset:
    folder = find_cifar10_folder(Path(spec.root), download=spec.download)
    train_x, train_y, test_x, test_y, names = read_cifar10_dataset(folder)
    if spec.train_limit:
        train_x, train_y = train_x[: spec.train_limit], train_y[: spec.train_limit]
    if spec.test_limit:
        test_x, test_y = test_x[: spec.test_limit], test_y[: spec.test_limit]
    top = int(max(train_y.max(initial=0), test_y.max(initial=0)))
    if top >= len(names) or min(train_y.min(initial=0), test_y.min(initial=0)) < 0:
        raise KdsearchError(f"{folder}: labels run from 0 to {top} but batches.meta names {len(names)} classes")
    train, test = Part(torch.from_numpy(train_x.copy()), torch.from_numpy(train_y)), Part(
        torch.from_numpy(test_x.copy()), torch.from_numpy(test_y)
    )
    files = [folder / n for n in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)]
    (train, test), hit = _conform_parts(spec, [train, test], files, cache_dir)
    return RawDataset(train, test, None, names, cache_hit=hit)


def load_image_list(spec: DataSpec, images: ImageList, cache_dir: Path | None = None) -> RawDataset:
    """Decode (or load from the disk cache) every listed file; stop on, or skip, unreadable ones."""
    size, channels = spec.image_size or DEFAULT_IMAGE_SIZE, spec.resolved_channels()
    order = [s for s in SPLIT_FOLDERS if s in images.files]
    files = [p for s in order for p in images.files[s]]
    if spec.stream == "never":
        check_memory_budget(
            len(files), channels, size, spec.memory_budget_mb, fix=', or set data.stream = "auto" to stream from disk'
        )
    stream = spec.stream == "always" or not fits_memory_budget(len(files), channels, size, spec.memory_budget_mb)
    decoded: Tensor | ImageStore
    streaming = ""
    if stream:
        why = (
            'data.stream = "always"' if fits_memory_budget(len(files), channels, size, spec.memory_budget_mb)
            else f"{len(files)} images exceed memory_budget_mb = {spec.memory_budget_mb}"
        )  # fmt: skip
        streaming = f"{why}; streaming from disk with {spec.loader_workers} loader workers"
        log.info("data: %s", streaming)
        decoded, bad, hit = ImageStore(tuple(str(f) for f in files), size, channels, workers=spec.loader_workers), probe_images(files), None
    else:
        settings = {"size": size, "channels": channels, "resample": "bilinear"}
        decoded, bad, hit, _ = cached_decode(
            files, settings, len(files), lambda: decode_images(files, size, channels), cache_dir,
            keep_failed=spec.skip_unreadable,
        )  # fmt: skip
    if bad and not spec.skip_unreadable:
        raise KdsearchError(
            f"{len(bad)} unreadable image(s) under {images.root}: "
            f"{_listing([f'{files[i]} ({why})' for i, why in bad])}. "
            "Delete or replace them, or set data.skip_unreadable = true to leave them out"
        )
    keep = torch.ones(len(files), dtype=torch.bool)
    for i, _ in bad:
        keep[i] = False
    skipped = [str(files[i]) for i, _ in bad]
    if skipped:
        log.warning("data: skipped %d unreadable image(s) (data.skip_unreadable): %s", len(skipped), _listing(skipped))
    parts: dict[str, Part] = {}
    start = 0
    for s in order:
        n = len(images.files[s])
        mask = keep[start : start + n]
        part = Part(take(take(decoded, slice(start, start + n)), mask), torch.tensor(images.labels[s], dtype=torch.int64)[mask])
        if len(part.y) == 0:
            raise KdsearchError(f"every {s} image under {images.root} is unreadable; nothing is left for the {s} split")
        parts[s] = part
        start += n
    return RawDataset(parts["train"], parts.get("test"), parts.get("val"), images.class_names, skipped, hit, streaming)


def load_image_folder(spec: DataSpec, cache_dir: Path | None = None) -> RawDataset:
    images = list_image_folder(Path(spec.root))
    for s, name in (("val", "val_size"), ("test", "test_size")):
        if s in images.files:
            log.info("data: using %s for the %s split (data.%s is not used)", Path(spec.root) / s, s, name)
    return load_image_list(spec, images, cache_dir)


def load_csv(spec: DataSpec, cache_dir: Path | None = None) -> RawDataset:
    root = Path(spec.root)
    images = read_csv_index(
        _under(root, spec.csv_file),
        _under(root, spec.image_dir),
        file_column=spec.file_column,
        label_column=spec.label_column,
        partition_column=spec.partition_column,
        train_value=spec.train_value,
        test_value=spec.test_value,
    )
    return load_image_list(spec, images, cache_dir)


LOADERS: dict[str, Callable[[DataSpec, Path | None], RawDataset]] = {
    "idx": load_idx,
    "cifar10": load_cifar10,
    "image_folder": load_image_folder,
    "csv": load_csv,
}


# --------------------------------------------------------------------------------------------
# RawDataset → Splits
# --------------------------------------------------------------------------------------------


def _fingerprint(*parts: Tensor | ImageStore | str | int) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, ImageStore):
            h.update(f"store:{part.key()}".encode())
        elif isinstance(part, Tensor):
            h.update(np.ascontiguousarray(part.numpy()))
        else:
            h.update(repr(part).encode())
    return h.hexdigest()[:16]


def channel_stats(x: Tensor, chunk_elements: int = 2**24) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of uint8 N×C×H×W images on the [0, 1] scale (float64 sums, chunked)."""
    c = x.shape[1]
    chunk = max(1, chunk_elements // max(1, x[0].numel()))
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk].float()
        total += block.sum(dim=(0, 2, 3)).double()  # float32 pairwise sums of ≤ 2**24 values, then float64
        squares += block.square_().sum(dim=(0, 2, 3)).double()
    count = x.numel() // c
    mean = total / count
    var = (squares - count * mean.square()) / max(1, count - 1)
    std = var.clamp_min(0).sqrt() / 255
    return (mean / 255).float(), std.float().clamp_min(1e-6)


def sampled_channel_stats(store: ImageStore, seed: int, budget_mb: int) -> tuple[Tensor, Tensor]:
    """``channel_stats`` of a seeded sample of a streamed split (every image when it has few enough)."""
    per_image = store.channels * store.size * store.size
    sample = max(64, min(STATS_SAMPLE, budget_mb * 2**20 // max(1, per_image)))
    n = len(store)
    if n <= sample:
        rows = torch.arange(n)
    else:
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 3))[:sample].sort().values
    raw = replace(store, mean=None, std=None, device=torch.device("cpu"))
    x = torch.cat(list(raw.subset(rows).split(256)))
    log.info(
        "data: mean/std estimated from %s of the %d streamed training images (set data.mean and data.std to fix them)",
        "all" if len(rows) == n else f"a seeded sample of {len(rows)}", n,
    )  # fmt: skip
    return channel_stats(x)


def assemble_splits(spec: DataSpec, raw: RawDataset) -> Splits:
    """Carve missing test/val splits with seeds, draw the student subsets, normalize, fingerprint."""
    pool, extras = raw.train, []
    if raw.test is None:
        n_test = resolve_size(spec.test_size if spec.test_size is not None else DEFAULT_TEST_FRACTION, len(pool.y))
        rest, test_idx = split_indices(len(pool.y), n_test, spec.split_seed + 2, name="data.test_size")
        test = Part(take(pool.x, test_idx), pool.y[test_idx])
        pool = Part(take(pool.x, rest), pool.y[rest])
        extras += ["test_size", n_test]
    else:
        test = raw.test
    if raw.val is None:
        n_val = resolve_size(spec.val_size, len(pool.y))
        train_idx, val_idx = split_indices(len(pool.y), n_val, spec.split_seed)
        train, val = Part(take(pool.x, train_idx), pool.y[train_idx]), Part(take(pool.x, val_idx), pool.y[val_idx])
    else:
        n_val = "folder"
        train, val = pool, raw.val
        extras += ["val", val.x, val.y]
    labeled, unlabeled = student_subsets(len(train.y), spec.labeled, spec.unlabeled, spec.split_seed)

    if spec.mean is not None and spec.std is not None:
        mean, std = torch.tensor(spec.mean, dtype=torch.float32), torch.tensor(spec.std, dtype=torch.float32)
        extras += ["mean", list(spec.mean), "std", list(spec.std)]
    elif isinstance(train.x, ImageStore):
        mean, std = sampled_channel_stats(train.x, spec.split_seed, spec.memory_budget_mb)
    else:
        mean, std = channel_stats(train.x)
    c = train.x.shape[1]

    def normalize(x: Tensor | ImageStore) -> Tensor | ImageStore:
        if isinstance(x, ImageStore):
            return x.normalized(mean, std)
        return x.float().div_(255).sub_(mean.view(1, c, 1, 1)).div_(std.view(1, c, 1, 1))

    if spec.source != "idx":
        extras += ["source", spec.source, "shape", tuple(train.x.shape[1:]), "classes", raw.class_names]
    elif raw.cache_hit is not None:  # idx resized or converted
        extras += ["shape", tuple(train.x.shape[1:])]
    # idx without image_size/channels/mean/std keeps the fingerprint it had before the other sources existed
    fingerprint = _fingerprint(raw.train.x, raw.train.y, test.x, test.y, n_val, spec.split_seed, *extras)
    num_classes = max(len(raw.class_names), int(max(train.y.max(), test.y.max(), val.y.max())) + 1)
    return Splits(
        train=Split(normalize(train.x), train.y),
        val=Split(normalize(val.x), val.y),
        test=Split(normalize(test.x), test.y),
        labeled=labeled,
        unlabeled=unlabeled,
        num_classes=num_classes,
        in_channels=c,
        image_size=int(train.x.shape[2]),
        fingerprint=fingerprint,
        class_names=list(raw.class_names),
        skipped=list(raw.skipped),
        cache_hit=raw.cache_hit,
        streaming=raw.streaming,
    )


def load_splits(spec: DataSpec, *, cache_dir: Path | str | None = None) -> Splits:
    """Read the dataset named by ``spec`` and return normalized splits (in memory, or streamed ``ImageStore``s).

    ``cache_dir``: folder of the decoded-image cache (default ``$KDSEARCH_CACHE/data`` or
    ``~/.cache/kdsearch/data``); pass ``cache_root(spec) / "data"`` to follow ``runtime.cache_dir``.
    """
    raw = LOADERS[spec.source](spec, Path(cache_dir) if cache_dir is not None else None)
    splits = assemble_splits(spec, raw)
    log.info(
        "data: %s %s: %d train / %d val / %d test, %d classes, %d×%d×%d%s",
        spec.source, spec.root, len(splits.train), len(splits.val), len(splits.test), splits.num_classes,
        splits.in_channels, splits.image_size, splits.image_size,
        ", streamed from disk" if splits.streaming
        else "" if splits.cache_hit is None else (", decoded images from cache" if splits.cache_hit else ", decoded now"),
    )  # fmt: skip
    return splits
