"""What the sources hand over (``Part``, ``RawDataset``) and what the study uses (``Split``, ``Splits``).

A split's images are a tensor, or, when streamed, an ``ImageStore``: a lazy stand-in for the
N×C×S×S tensor that reads the rows asked for through an ``ImageReader`` (image files, or the items
of a dataset handed over in Python), decoding them with the same steps as the in-memory path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import KdsearchError
from .cache import decode_cache_key
from .images import decode_image, fill_images


class ImageReader(ABC):
    """A collection of images read one at a time as uint8 ``channels``×``size``×``size`` arrays."""

    size: int
    channels: int
    threads: bool = True  # whether ``read`` may run on several threads at once

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 C×S×S; raises when it cannot be read."""

    @abstractmethod
    def failure(self, i: int, why: str) -> str:
        """The one-line error (problem and fix) when image ``i`` cannot be read for reason ``why``."""

    @abstractmethod
    def key(self, rows: Sequence[int]) -> str:
        """A hash identifying the images ``rows`` as decoded (it changes when they change)."""


@dataclass(frozen=True)
class FileReader(ImageReader):
    """Image files, decoded with ``decode_image``."""

    files: tuple[str, ...]
    size: int
    channels: int

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> np.ndarray:
        return decode_image(Path(self.files[i]), self.size, self.channels)

    def failure(self, i: int, why: str) -> str:
        return (
            f"cannot decode streamed image {self.files[i]} ({why}); delete or replace it "
            "(data.skip_unreadable = true leaves out the files that cannot be opened)"
        )

    def key(self, rows: Sequence[int]) -> str:
        """The file list (paths, sizes, mtimes), size and channels."""
        files = [Path(self.files[r]) for r in rows]
        return decode_cache_key(files, {"size": self.size, "channels": self.channels, "stream": True})


@dataclass(eq=False)
class ImageStore(Dataset):
    """Images standing in for an N×C×S×S tensor: rows are decoded (and normalized) when indexed.

    ``store[rows]`` (an index tensor, list, slice or int) decodes those rows into a float32 tensor
    on ``device``, normalized with ``mean``/``std`` (uint8 when they are None), with the same PIL
    steps and arithmetic as the in-memory path, so both give identical tensors. ``subset(rows)``
    is another store (nothing decoded); ``split(n)`` and ``batches(index_batches)`` yield decoded
    batches through a DataLoader with ``workers`` processes (in-process when 0). ``rows`` index
    the ``reader``'s images.
    """

    reader: ImageReader
    rows: tuple[int, ...]
    mean: Tensor | None = None
    std: Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = 0

    @classmethod
    def of(cls, reader: ImageReader, *, workers: int = 0) -> "ImageStore":
        """The store of every image of ``reader``."""
        return cls(reader, tuple(range(len(reader))), workers=workers)

    @property
    def size(self) -> int:
        return self.reader.size

    @property
    def channels(self) -> int:
        return self.reader.channels

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), self.channels, self.size, self.size))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.mean is None else torch.float32

    ndim = 4

    def dim(self) -> int:
        return 4

    def _rows(self, rows: Tensor | Sequence[int] | slice) -> list[int]:
        if isinstance(rows, slice):
            return list(range(len(self.rows)))[rows]
        if isinstance(rows, Tensor):
            rows = rows.cpu()
            if rows.dtype == torch.bool:
                rows = rows.nonzero().flatten()
            return rows.tolist()
        return [int(r) for r in rows]

    def subset(self, rows: Tensor | Sequence[int] | slice) -> "ImageStore":
        """The store of the given rows (nothing is decoded)."""
        return replace(self, rows=tuple(self.rows[i] for i in self._rows(rows)))

    def normalized(self, mean: Tensor, std: Tensor) -> "ImageStore":
        return replace(self, mean=mean, std=std)

    def to(self, device: torch.device | str, *_, **__) -> "ImageStore":
        """The same store, its decoded batches landing on ``device``."""
        return replace(self, device=torch.device(device))

    def decode(self, rows: Sequence[int]) -> Tensor:
        """uint8 images of ``rows`` (CPU); KdsearchError naming the image when one cannot be decoded."""
        ids = [self.rows[i] for i in rows]
        read = self.reader.read
        out, bad = fill_images(len(ids), self.channels, self.size, lambda k: read(ids[k]), threads=self.reader.threads)
        if bad:
            k, why = bad[0]
            raise KdsearchError(self.reader.failure(ids[k], why))
        return torch.from_numpy(out)

    def __getitem__(self, rows: Tensor | Sequence[int] | slice | int) -> Tensor:
        single = isinstance(rows, int) or (isinstance(rows, Tensor) and rows.dim() == 0)
        x = self.decode([int(rows)] if single else self._rows(rows))
        if self.mean is not None:
            c = self.channels
            x = x.float().div_(255).sub_(self.mean.view(1, c, 1, 1)).div_(self.std.view(1, c, 1, 1))
        x = x.to(self.device)
        return x[0] if single else x

    def batches(self, index_batches: Sequence[Sequence[int]] | Tensor) -> Iterator[Tensor]:
        """Decoded batches of ``index_batches`` in order, on ``device``, decoded ahead by the loader workers."""
        cpu = replace(self, device=torch.device("cpu"))
        batches = [b.tolist() if isinstance(b, Tensor) else list(b) for b in index_batches]
        if self.workers == 0 or len(batches) == 0:
            for b in batches:
                yield to_device(cpu[b], self.device)
            return
        loader = torch.utils.data.DataLoader(
            cpu,
            sampler=batches,
            batch_size=None,
            num_workers=min(self.workers, len(batches)),
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # worker seeds from its own generator: the global RNG (dropout) is untouched
        )
        try:
            for x in loader:
                yield x.to(self.device, non_blocking=True)
        except KdsearchError as err:  # torch wraps a worker's error with its traceback: keep the message alone
            message = str(err).strip().splitlines()[-1].split("KdsearchError: ", 1)[-1]
            raise KdsearchError(message) from None

    def split(self, batch_size: int) -> Iterator[Tensor]:
        """Consecutive decoded chunks of ``batch_size`` rows, like ``Tensor.split``."""
        n = len(self.rows)
        return self.batches([range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)])

    def key(self) -> str:
        """Identifies the images: the reader's key of these rows (files: paths, sizes, mtimes; size, channels)."""
        return self.reader.key(self.rows)


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``: a CPU tensor bound for CUDA goes through pinned memory as an asynchronous
    (``non_blocking``) copy, ordered before later work on the current stream; anything else is ``t.to(device)``
    (``t`` itself when it is already there, e.g. every tensor on a CPU run)."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


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
        """This split on ``device`` (tensors through ``to_device``; a streamed ``x`` stays a store whose batches
        land there)."""
        device = torch.device(device)
        x = self.x.to(device) if isinstance(self.x, ImageStore) else to_device(self.x, device)
        return Split(x, to_device(self.y, device))

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
    streaming: str = ""  # non-empty when the splits' x are ImageStores (streamed): why and how
    mean: list[float] = field(default_factory=list)  # the per-channel normalization applied, on the [0, 1] scale
    std: list[float] = field(default_factory=list)


@dataclass
class Part:
    """One split as the source gives it: uint8 images ``x`` (N×C×H×W; an ``ImageStore`` when streamed) and int64 labels ``y``."""

    x: Tensor | ImageStore
    y: Tensor


@dataclass
class RawDataset:
    """A source's uint8 data before splitting: ``test``/``val`` None means "carve it from train".

    ``origin`` names where datasets handed over in Python came from (the factory, the torchvision
    class); it is part of the splits' fingerprint ("" for the file sources).
    """

    train: Part
    test: Part | None
    val: Part | None
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)
    cache_hit: bool | None = None
    streaming: str = ""  # why and how the images stream ("" : held in memory)
    origin: str = ""
