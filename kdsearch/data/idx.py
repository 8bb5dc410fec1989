"""``data.source = "idx"``: the MNIST file layout (Fashion-MNIST, the default study).

``data.download = "mnist"`` or ``"fashion_mnist"`` (also ``true``) fetches one with torchvision
into ``root`` when it holds no IDX files.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..config.spec import DEFAULT_FASHION_MNIST_ROOT, DataSpec
from ..errors import KdsearchError
from .arrays import as_nchw, conform_parts, fetch_with_torchvision
from .sources import SOURCES
from .store import Part, RawDataset

log = logging.getLogger(__name__)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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
            raise KdsearchError(
                f"{where}: {len(images)} images but {len(labels)} labels; the files do not belong together"
            )
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


@SOURCES.register("idx")
def load_idx(spec: DataSpec, cache_dir: Path | None = None) -> RawDataset:
    """The four IDX files of ``data.root`` (fetched first with ``data.download``), resized when asked."""
    root = idx_folder(Path(spec.root), spec.download)
    train_img, train_lab, test_img, test_lab = read_idx_dataset(root)
    if spec.train_limit:
        train_img, train_lab = train_img[: spec.train_limit], train_lab[: spec.train_limit]
    if spec.test_limit:
        test_img, test_lab = test_img[: spec.test_limit], test_lab[: spec.test_limit]
    train = Part(as_nchw(train_img), torch.from_numpy(train_lab.astype(np.int64)))
    test = Part(as_nchw(test_img), torch.from_numpy(test_lab.astype(np.int64)))
    files = [find_idx_file(root, stem) for stem in IDX_FILES.values()]
    (train, test), hit = conform_parts(spec, [train, test], files, cache_dir)
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    return RawDataset(train, test, None, [str(i) for i in range(num_classes)], cache_hit=hit)
