"""Helpers of the array sources (idx, cifar10): N×C×H×W tensors, resizing (disk-cached), downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config.spec import DataSpec
from ..errors import KdsearchError
from .cache import cached_decode
from .images import conform_images
from .splits import check_memory_budget
from .store import Part


def as_nchw(images: np.ndarray) -> Tensor:
    """N×H×W or N×H×W×C images → an N×C×H×W tensor (a copy)."""
    t = torch.from_numpy(np.array(images, copy=True))
    return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def conform_parts(
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
        "source": spec.source,
        "size": size,
        "channels": channels,
        "limits": [spec.train_limit, spec.test_limit],
        "counts": [len(p.y) for p in parts],
    }

    def build() -> tuple[np.ndarray, list[tuple[int, str]]]:
        return conform_images(torch.cat([p.x for p in parts]).numpy(), size, channels), []

    images, _, hit, _ = cached_decode(files, settings, n, build, cache_dir)
    out, start = [], 0
    for p in parts:
        out.append(Part(images[start : start + len(p.y)], p.y))
        start += len(p.y)
    return out, hit


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
