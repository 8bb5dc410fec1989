"""A source's ``RawDataset`` → ``Splits``: seeded splits and subsets, memory budget, normalization, fingerprint.

Pure where it can be: ``resolve_size``, ``split_indices`` and ``student_subsets`` are deterministic
functions of their arguments.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from ..config.spec import DataSpec
from ..errors import KdsearchError
from .store import ImageStore, Part, RawDataset, Split, Splits, take

log = logging.getLogger(__name__)

DEFAULT_TEST_FRACTION = 0.1  # when a test split must be carved and data.test_size is not given
STATS_SAMPLE = 2048  # streamed images decoded to estimate mean/std when data.mean/std are not given
STREAMING_SOURCES = ". Only the image_folder, csv, torchvision and python sources stream data larger than memory"


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
        f"data.image_size ({hint}){fix or STREAMING_SOURCES}"
    )


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
        "all" if len(rows) == n else f"a seeded sample of {len(rows)}",
        n,
    )
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
    if raw.origin:
        extras += ["origin", raw.origin]
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
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
    )
