"""Map-style datasets of ``(image, label)`` items → ``RawDataset`` (the python and torchvision sources).

A first pass reads every item: it checks it (``items``), hashes it as returned, and notes its label
and size. Data that fits ``data.memory_budget_mb`` is then converted into uint8 tensors (a second
pass, skipped on a cache hit) and cached on disk under a key made of that hash and the resize
settings: changed data is never served stale, unchanged data is a hit. Larger data, or any with
``data.stream = "always"``, streams: each split's ``x`` is an ``ImageStore`` over the dataset,
converting the items asked for with the same steps.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config.spec import DataSpec
from ..errors import KdsearchError, first_line
from .cache import cached_decode
from .items import as_image, as_label, conform_image, hash_image, image_shape, read_pair
from .splits import check_memory_budget, fits_memory_budget
from .store import ImageReader, ImageStore, Part, RawDataset

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class DatasetReader(ImageReader):
    """The first ``count`` items of one split's dataset, converted to uint8 ``channels``×``size``×``size``.

    ``digest`` is the hash of those items (``scan_items``); it makes the reader's ``key``.
    """

    dataset: Any
    split: str
    count: int
    size: int
    channels: int
    digest: str
    threads = False  # a user's dataset need not be thread-safe; the DataLoader's worker processes are

    def __len__(self) -> int:
        return self.count

    def read(self, i: int) -> np.ndarray:
        """Item ``i``'s image converted; a KdsearchError naming the item when that fails."""
        where = f"{self.split} item {i}"
        image, _ = read_pair(self.dataset, i, where)
        image = as_image(image, where)
        try:
            return conform_image(image, self.size, self.channels)
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - PIL raises many types for modes it cannot convert
            shape = f"{self.channels}×{self.size}×{self.size}"
            raise KdsearchError(
                f"{where}: converting it to {shape} raised {type(err).__name__}: {first_line(err)}"
            ) from None

    def failure(self, i: int, why: str) -> str:
        return why if why.startswith(f"{self.split} item {i}") else f"{self.split} item {i}: {why}"

    def key(self, rows: Sequence[int]) -> str:
        h = hashlib.sha256(f"{self.digest}:{self.size}:{self.channels}:".encode())
        h.update(np.asarray(rows, dtype=np.int64).tobytes())
        return h.hexdigest()[:24]


@dataclass
class Scan:
    """What one pass over the items found: labels and hash per split, channels seen, the common size."""

    labels: dict[str, Tensor]
    digests: dict[str, str]
    channels: set[int]
    size: int | None  # the items' common square size (None when data.image_size is given)


def scan_items(
    datasets: dict[str, Any], counts: dict[str, int], num_classes: int | None, image_size: int | None
) -> Scan:
    """Read, check and hash every item once; without ``image_size`` all images must share one square size."""
    labels: dict[str, Tensor] = {}
    digests: dict[str, str] = {}
    channels: set[int] = set()
    first: tuple[str, int, int] | None = None  # the first item: where, height, width
    for split, dataset in datasets.items():
        h = hashlib.sha256(f"{split}:{counts[split]}:".encode())
        y = np.empty(counts[split], dtype=np.int64)
        for i in range(counts[split]):
            where = f"{split} item {i}"
            image, label = read_pair(dataset, i, where)
            c, height, width = image_shape(as_image(image, where))
            y[i] = as_label(label, where, num_classes)
            hash_image(h, image)
            channels.add(c)
            if image_size is not None:
                continue
            if first is None:
                first = (where, height, width)
                if height != width:
                    raise KdsearchError(
                        f"{where} is {height}×{width} pixels, not square; set data.image_size to resize every image "
                        "to one square size"
                    )
            elif (height, width) != first[1:]:
                raise KdsearchError(
                    f"{where} is {height}×{width} pixels but {first[0]} is {first[1]}×{first[2]}: the images differ "
                    "in size; set data.image_size to resize every image to one square size"
                )
        h.update(y.tobytes())
        labels[split], digests[split] = torch.from_numpy(y), h.hexdigest()
    return Scan(labels, digests, channels, first[1] if first else None)


def item_counts(spec: DataSpec, datasets: dict[str, Any], origin: str) -> dict[str, int]:
    """Items used per split: all, or the first ``data.train_limit`` / ``data.test_limit``; checks each is map-style."""
    counts = {}
    for split, dataset in datasets.items():
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise KdsearchError(
                f"the {split} dataset of {origin} is {type(dataset).__name__}, expected a map-style dataset "
                "(len() and [i]) of (image, label) items, e.g. a torch Dataset or a list of pairs"
            )
        n = len(dataset)
        limit = {"train": spec.train_limit, "test": spec.test_limit}.get(split, 0)
        counts[split] = min(n, limit) if limit else n
        if counts[split] == 0:
            raise KdsearchError(f"the {split} dataset of {origin} is empty; it needs at least one (image, label) item")
    return counts


def load_datasets(
    spec: DataSpec, datasets: dict[str, Any], class_names: list[str] | None, cache_dir: Path | None, *, origin: str
) -> RawDataset:
    """Check, hash and convert the items of ``datasets`` (``train`` and optionally ``val``, ``test``).

    Images become ``data.channels`` (default: 3 when any item is RGB, else 1) × ``data.image_size``
    (default: the items' own size, which must then be one square size for all). ``class_names``
    bound the labels when given, else they are "0", "1", … up to the largest label. ``origin`` names
    the datasets in messages and in the fingerprint (e.g. "data.factory = 'm:f'").
    """
    datasets = {s: datasets[s] for s in SPLITS if s in datasets}
    for split, field in (("val", "val_size"), ("test", "test_size")):
        if split in datasets and (split == "val" or spec.test_size is not None):
            log.info("data: using the %s split of %s (data.%s is not used)", split, origin, field)
    counts = item_counts(spec, datasets, origin)
    scan = scan_items(datasets, counts, len(class_names) if class_names else None, spec.image_size)
    size = spec.image_size or scan.size
    assert size is not None  # every split holds an item
    channels = spec.channels or (3 if 3 in scan.channels else 1)
    if spec.mean is not None and len(spec.mean) != channels:
        raise KdsearchError(
            f"data.mean and data.std give {len(spec.mean)} values but the images of {origin} have {channels} "
            f"channel(s); set data.channels = {len(spec.mean)} to convert them, or data.channels = {channels} "
            f"with {channels} values"
        )
    if not class_names:
        top = max(int(y.max()) for y in scan.labels.values())
        class_names = [str(i) for i in range(top + 1)]
    n = sum(counts.values())
    fits = fits_memory_budget(n, channels, size, spec.memory_budget_mb)
    if spec.stream == "never":
        check_memory_budget(n, channels, size, spec.memory_budget_mb, fix=', or set data.stream = "auto" to stream it')
    readers = {s: DatasetReader(ds, s, counts[s], size, channels, scan.digests[s]) for s, ds in datasets.items()}
    if spec.stream == "always" or not fits:
        why = 'data.stream = "always"' if fits else f"{n} images exceed memory_budget_mb = {spec.memory_budget_mb}"
        streaming = f"{why}; streaming from the datasets with {spec.loader_workers} loader workers"
        log.info("data: %s", streaming)
        parts = {s: Part(ImageStore.of(r, workers=spec.loader_workers), scan.labels[s]) for s, r in readers.items()}
        return RawDataset(
            parts["train"], parts.get("test"), parts.get("val"), class_names, streaming=streaming, origin=origin
        )

    def build() -> tuple[np.ndarray, list[tuple[int, str]]]:
        out, start = np.empty((n, channels, size, size), dtype=np.uint8), 0
        for reader in readers.values():
            for i in range(len(reader)):
                out[start + i] = reader.read(i)  # a KdsearchError naming the item when it cannot be converted
            start += len(reader)
        return out, []

    settings = {  # the items themselves, not where they came from: changed data is never served stale
        "items": [scan.digests[s] for s in datasets],
        "counts": [counts[s] for s in datasets],
        "size": size,
        "channels": channels,
        "resample": "bilinear",
    }
    images, _, hit, _ = cached_decode([], settings, n, build, cache_dir)
    parts, start = {}, 0
    for s in datasets:
        parts[s] = Part(images[start : start + counts[s]], scan.labels[s])
        start += counts[s]
    return RawDataset(parts["train"], parts.get("test"), parts.get("val"), class_names, cache_hit=hit, origin=origin)
