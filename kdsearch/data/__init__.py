"""Dataset sources → ``Splits(train, val, test)`` held in memory as normalized float tensors (or streamed).

Sources (``data.source``), one module each, registered in ``SOURCES``:

* ``idx`` (``idx.py``): the MNIST file layout (Fashion-MNIST, the default study);
  ``data.download = "mnist"`` or ``"fashion_mnist"`` fetches one with torchvision.
* ``cifar10`` (``cifar10.py``): the CIFAR-10 python-pickle batches (``data_batch_1..5``,
  ``test_batch``, optional ``batches.meta``); ``data.download = true`` fetches them with torchvision.
* ``image_folder`` (``image_folder.py``): ``root/<class>/*.png|jpg|jpeg|bmp|webp``, or
  ``root/train|val|test/<class>/…``.
* ``csv`` (``csv_source.py``): an image folder plus a CSV giving each file's label and partition (MHIST layout).
* ``torchvision`` (``torchvision_source.py``): a class of ``torchvision.datasets`` (``data.dataset``).
* ``python`` (``python_source.py``): the map-style datasets returned by ``data.factory``, or handed
  over in Python (``load_splits(..., datasets=...)``).
* ``hf`` (``hf_source.py``): a Hugging Face ``datasets`` dataset on disk (``save_to_disk``, or an image folder /
  parquet files ``load_dataset`` reads), its image and label columns as items.

Every source ends as uint8 N×C×H×W tensors (``store.RawDataset``), is split with seeds and
normalized per channel (``data.mean``/``data.std``, else the training split's statistics) by
``splits.assemble_splits``. Decoding image files, resizing arrays and converting dataset items is
done once: the uint8 result is cached on disk (``cache.py``), keyed by the file list, sizes and
mtimes (for datasets: a hash of the items themselves) and the resize settings.

Data above ``data.memory_budget_mb`` (or any data with ``data.stream = "always"``) from the
``image_folder``, ``csv``, ``torchvision`` and ``python`` sources is not decoded into memory: each
split's ``x`` is then an ``ImageStore``, a lazy stand-in for the tensor that decodes the rows asked
for (``store[rows]``, ``store.split(n)``, ``store.batches(index_batches)``), through a DataLoader
with ``data.loader_workers`` worker processes where it pays off.

Adding a source is one module whose ``load_<name>(spec, cache_dir) -> RawDataset`` is decorated with
``@SOURCES.register("<name>")``, plus its import line below (and the name in ``DataSpec.source``).

Imports only ``nets`` (the user's import paths), ``config`` and the shared helpers: no training, search or Optuna.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config.spec import DataSpec
from ..errors import KdsearchError
from .cache import DATA_CACHE_VERSION, cached_decode, data_cache_dir, decode_cache_key, default_cache_root, save_atomic
from .cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_FOLDER,
    download_cifar10,
    find_cifar10_folder,
    load_cifar10,
    read_cifar10_batch,
    read_cifar10_dataset,
)
from .csv_source import load_csv, read_csv_index
from .datasets import DatasetReader, load_datasets
from .hf_source import load_hf

# the sources: importing a module registers it in SOURCES
from .idx import IDX_DOWNLOADS, IDX_FILES, download_idx, find_idx_file, idx_folder, load_idx, read_idx, read_idx_dataset
from .image_files import DEFAULT_IMAGE_SIZE, SPLIT_FOLDERS, ImageList, load_image_list
from .image_folder import list_image_folder, load_image_folder
from .images import IMAGE_EXTENSIONS, conform_images, decode_image, decode_images, probe_images
from .python_source import load_python
from .sources import SOURCES, Loader
from .splits import (
    DEFAULT_TEST_FRACTION,
    STATS_SAMPLE,
    assemble_splits,
    channel_stats,
    check_memory_budget,
    fits_memory_budget,
    resolve_size,
    sampled_channel_stats,
    split_indices,
    student_subsets,
)
from .store import FileReader, ImageReader, ImageStore, Part, RawDataset, Split, Splits, take, to_device
from .torchvision_source import load_torchvision

log = logging.getLogger(__name__)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_FOLDER",
    "DATA_CACHE_VERSION",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_TEST_FRACTION",
    "IDX_DOWNLOADS",
    "IDX_FILES",
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "SPLIT_FOLDERS",
    "STATS_SAMPLE",
    "DatasetReader",
    "FileReader",
    "ImageList",
    "ImageReader",
    "ImageStore",
    "Loader",
    "Part",
    "RawDataset",
    "Split",
    "Splits",
    "assemble_splits",
    "cached_decode",
    "channel_stats",
    "check_memory_budget",
    "conform_images",
    "data_cache_dir",
    "decode_cache_key",
    "decode_image",
    "decode_images",
    "default_cache_root",
    "download_cifar10",
    "download_idx",
    "find_cifar10_folder",
    "find_idx_file",
    "fits_memory_budget",
    "idx_folder",
    "list_image_folder",
    "load_cifar10",
    "load_csv",
    "load_datasets",
    "load_idx",
    "load_image_folder",
    "load_image_list",
    "load_hf",
    "load_python",
    "load_splits",
    "load_torchvision",
    "probe_images",
    "read_cifar10_batch",
    "read_cifar10_dataset",
    "read_csv_index",
    "read_idx",
    "read_idx_dataset",
    "resolve_size",
    "sampled_channel_stats",
    "save_atomic",
    "split_indices",
    "student_subsets",
    "take",
    "to_device",
]


def _where(spec: DataSpec, given: bool) -> str:
    """Where the data came from, for the log line: the factory or torchvision class, else ``data.root``."""
    if spec.source == "python":
        return "(datasets handed over in Python)" if given else str(spec.factory)
    if spec.source == "torchvision":
        return f"{spec.dataset} in {spec.root}"
    return str(spec.root)


def load_splits(spec: DataSpec, *, cache_dir: Path | str | None = None, datasets: Any = None) -> Splits:
    """Read the dataset named by ``spec`` and return normalized splits (in memory, or streamed ``ImageStore``s).

    ``cache_dir``: folder of the decoded-image cache (default ``$KDSEARCH_CACHE/data`` or
    ``~/.cache/kdsearch/data``); pass ``cache_root(spec) / "data"`` to follow ``runtime.cache_dir``.
    ``datasets``: datasets handed over in Python, in the shapes a ``data.factory`` returns (a dict
    ``{"train": ..., "val": ..., "test": ..., "classes": [...]}``, all but ``train`` optional, or a tuple
    ``(train, test)`` / ``(train, val, test)``); they need ``data.source = "python"`` and are used
    instead of calling ``data.factory`` (which may then be unset).

    Example::

        splits = load_splits(DataSpec(source="python", val_size=0.1), datasets={"train": train_ds, "test": test_ds})
    """
    cache = Path(cache_dir) if cache_dir is not None else None
    if datasets is not None:
        if spec.source != "python":
            raise KdsearchError(
                f'datasets were handed over in Python but data.source is {spec.source!r}; set data.source = "python" '
                "(or leave the datasets out to read the spec's source)"
            )
        raw = load_python(spec, cache, datasets=datasets)
    else:
        raw = SOURCES.get(spec.source)(spec, cache)
    splits = assemble_splits(spec, raw)
    log.info(
        "data: %s %s: %d train / %d val / %d test, %d classes, %d×%d×%d%s",
        spec.source,
        _where(spec, datasets is not None),
        len(splits.train),
        len(splits.val),
        len(splits.test),
        splits.num_classes,
        splits.in_channels,
        splits.image_size,
        splits.image_size,
        (", streamed" if raw.origin else ", streamed from disk")
        if splits.streaming
        else ""
        if splits.cache_hit is None
        else (", decoded images from cache" if splits.cache_hit else ", decoded now"),
    )
    return splits
