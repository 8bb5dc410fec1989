"""``data.source = "cifar10"``: the CIFAR-10 python-pickle batches.

``data_batch_1..5``, ``test_batch`` and optional ``batches.meta`` in ``root`` or
``root/cifar-10-batches-py``; ``data.download = true`` fetches them with torchvision.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from ..config.spec import DataSpec
from ..errors import KdsearchError
from .arrays import conform_parts, fetch_with_torchvision
from .sources import SOURCES
from .store import Part, RawDataset

log = logging.getLogger(__name__)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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


@SOURCES.register("cifar10")
def load_cifar10(spec: DataSpec, cache_dir: Path | None = None) -> RawDataset:
    """The batches of ``data.root`` (fetched first with ``data.download``), resized when asked."""
    folder = find_cifar10_folder(Path(spec.root), download=spec.download)
    train_x, train_y, test_x, test_y, names = read_cifar10_dataset(folder)
    if spec.train_limit:
        train_x, train_y = train_x[: spec.train_limit], train_y[: spec.train_limit]
    if spec.test_limit:
        test_x, test_y = test_x[: spec.test_limit], test_y[: spec.test_limit]
    top = int(max(train_y.max(initial=0), test_y.max(initial=0)))
    if top >= len(names) or min(train_y.min(initial=0), test_y.min(initial=0)) < 0:
        raise KdsearchError(f"{folder}: labels run from 0 to {top} but batches.meta names {len(names)} classes")
    train, test = (
        Part(torch.from_numpy(train_x.copy()), torch.from_numpy(train_y)),
        Part(torch.from_numpy(test_x.copy()), torch.from_numpy(test_y)),
    )
    files = [folder / n for n in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)]
    (train, test), hit = conform_parts(spec, [train, test], files, cache_dir)
    return RawDataset(train, test, None, names, cache_hit=hit)
