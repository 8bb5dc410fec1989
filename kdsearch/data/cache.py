"""The decoded-image disk cache: uint8 images decoded once, keyed by what they were decoded from.

The key hashes the decode settings and, for files, their paths, sizes and mtimes (for datasets
handed over in Python, the settings carry a hash of the items themselves). Writes are atomic and
guarded by a file lock, so parallel workers decode once and never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

DATA_CACHE_VERSION = 1


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
    except MemoryError:
        raise
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
