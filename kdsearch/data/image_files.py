"""Listed image files (the image_folder and csv sources): decoded into memory (disk-cached) or streamed.

Data above ``data.memory_budget_mb`` (or any data with ``data.stream = "always"``) is not decoded
into memory: each split's ``x`` is then an ``ImageStore`` over the files, decoding the rows asked
for through a DataLoader with ``data.loader_workers`` worker processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..config.spec import DataSpec
from ..errors import KdsearchError
from .cache import cached_decode
from .images import decode_images, probe_images
from .splits import check_memory_budget, fits_memory_budget
from .store import FileReader, ImageStore, Part, RawDataset, take

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "val", "test")
DEFAULT_IMAGE_SIZE = 32  # image_folder and csv, when data.image_size is not given
MAX_LISTED = 10  # problems named in one error message


@dataclass
class ImageList:
    """Image files and their labels per split (``train``, optionally ``val``/``test``), not decoded yet."""

    files: dict[str, list[Path]]
    labels: dict[str, list[int]]
    class_names: list[str]
    root: Path


def sorted_class_names(names: set[str] | Sequence[str]) -> list[str]:
    """Class names in order: numerically when all are integers, else alphabetically."""
    names = set(names)
    if all(n.strip().lstrip("-").isdigit() for n in names):
        return sorted(names, key=lambda n: int(n))
    return sorted(names)


def listing(items: Sequence[str], total: int | None = None) -> str:
    """The first ``MAX_LISTED`` of ``items`` joined by "; ", and how many more there are."""
    total = len(items) if total is None else total
    shown = "; ".join(items[:MAX_LISTED])
    return shown + (f"; … and {total - MAX_LISTED} more" if total > MAX_LISTED else "")


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
            'data.stream = "always"'
            if fits_memory_budget(len(files), channels, size, spec.memory_budget_mb)
            else f"{len(files)} images exceed memory_budget_mb = {spec.memory_budget_mb}"
        )
        streaming = f"{why}; streaming from disk with {spec.loader_workers} loader workers"
        log.info("data: %s", streaming)
        reader = FileReader(tuple(str(f) for f in files), size, channels)
        decoded, bad, hit = ImageStore.of(reader, workers=spec.loader_workers), probe_images(files), None
    else:
        settings = {"size": size, "channels": channels, "resample": "bilinear"}
        decoded, bad, hit, _ = cached_decode(
            files,
            settings,
            len(files),
            lambda: decode_images(files, size, channels),
            cache_dir,
            keep_failed=spec.skip_unreadable,
        )
    if bad and not spec.skip_unreadable:
        raise KdsearchError(
            f"{len(bad)} unreadable image(s) under {images.root}: "
            f"{listing([f'{files[i]} ({why})' for i, why in bad])}. "
            "Delete or replace them, or set data.skip_unreadable = true to leave them out"
        )
    keep = torch.ones(len(files), dtype=torch.bool)
    for i, _ in bad:
        keep[i] = False
    skipped = [str(files[i]) for i, _ in bad]
    if skipped:
        log.warning("data: skipped %d unreadable image(s) (data.skip_unreadable): %s", len(skipped), listing(skipped))
    parts: dict[str, Part] = {}
    start = 0
    for s in order:
        n = len(images.files[s])
        mask = keep[start : start + n]
        part = Part(
            take(take(decoded, slice(start, start + n)), mask), torch.tensor(images.labels[s], dtype=torch.int64)[mask]
        )
        if len(part.y) == 0:
            raise KdsearchError(f"every {s} image under {images.root} is unreadable; nothing is left for the {s} split")
        parts[s] = part
        start += n
    return RawDataset(parts["train"], parts.get("test"), parts.get("val"), images.class_names, skipped, hit, streaming)
