"""Dataset sources → ``Splits(train, val, test)`` held in memory as normalized float tensors.

Pure where it can be: ``split_indices`` and ``student_subsets`` are deterministic functions of
their seeds. Reading files is ``read_*`` / ``load_splits``.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import KdsearchError
from .spec import DataSpec

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass
class Split:
    """Images ``x`` (N×C×H×W float32, normalized) and integer labels ``y`` (N)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Splits:
    """Train (teacher's training set, student's pool), val (tuning), test (final comparison only).

    ``labeled`` and ``unlabeled`` index ``train``: the student may use the labels of the first,
    and sees the second only through the teacher's soft targets.
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


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into an array; KdsearchError if it is not a valid one."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
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
        "or pass --data-root DIR (data.root in the spec) for a folder holding the four IDX files"
    )


def download_fashion_mnist(root: Path) -> Path:
    """For users with internet: fetch Fashion-MNIST with torchvision into ``root``; returns the IDX folder."""
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), train=True, download=True)
    FashionMNIST(str(root), train=False, download=True)
    return root / "FashionMNIST" / "raw"


def read_idx_dataset(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from an MNIST-layout folder."""
    arrays = {key: read_idx(find_idx_file(root, stem)) for key, stem in IDX_FILES.items()}
    for part in ("train", "test"):
        n_img, n_lab = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if n_img != n_lab:
            raise KdsearchError(f"{root}: {part} has {n_img} images but {n_lab} labels; the files do not belong together")
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]


def split_indices(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded, disjoint (train, val) partition of ``range(n)``."""
    if val_size >= n:
        raise KdsearchError(f"data.val_size = {val_size} leaves no training images out of {n}; lower it")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def student_subsets(n_train: int, labeled: int, unlabeled: int, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded, disjoint (labeled, unlabeled) index sets into the training split."""
    if labeled + unlabeled > n_train:
        raise KdsearchError(
            f"data.labeled + data.unlabeled = {labeled + unlabeled} exceeds the {n_train} training images; lower them"
        )
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + 1))
    return perm[:labeled].sort().values, perm[labeled : labeled + unlabeled].sort().values


def _as_nchw(images: np.ndarray) -> Tensor:
    t = torch.from_numpy(np.array(images, copy=True))
    return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def _fingerprint(*parts: Tensor | str | int) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.contiguous().numpy().tobytes() if isinstance(part, Tensor) else repr(part).encode())
    return h.hexdigest()[:16]


def load_splits(spec: DataSpec) -> Splits:
    """Read the dataset named by ``spec`` and return normalized in-memory splits."""
    train_img, train_lab, test_img, test_lab = read_idx_dataset(Path(spec.root))
    if spec.train_limit:
        train_img, train_lab = train_img[: spec.train_limit], train_lab[: spec.train_limit]
    if spec.test_limit:
        test_img, test_lab = test_img[: spec.test_limit], test_lab[: spec.test_limit]
    x_all, y_all = _as_nchw(train_img), torch.from_numpy(train_lab.astype(np.int64))
    x_test, y_test = _as_nchw(test_img), torch.from_numpy(test_lab.astype(np.int64))
    num_classes = int(max(y_all.max(), y_test.max())) + 1

    train_idx, val_idx = split_indices(len(y_all), spec.val_size, spec.split_seed)
    labeled, unlabeled = student_subsets(len(train_idx), spec.labeled, spec.unlabeled, spec.split_seed)

    x_train = x_all[train_idx].float().div_(255)
    mean, std = x_train.mean(), x_train.std().clamp_min(1e-6)

    def normalize(x: Tensor) -> Tensor:
        return x.float().div_(255).sub_(mean).div_(std)

    fingerprint = _fingerprint(x_all, y_all, x_test, y_test, spec.val_size, spec.split_seed)
    return Splits(
        train=Split(x_train.sub_(mean).div_(std), y_all[train_idx]),
        val=Split(normalize(x_all[val_idx]), y_all[val_idx]),
        test=Split(normalize(x_test), y_test),
        labeled=labeled,
        unlabeled=unlabeled,
        num_classes=num_classes,
        in_channels=int(x_all.shape[1]),
        image_size=int(x_all.shape[2]),
        fingerprint=fingerprint,
    )
