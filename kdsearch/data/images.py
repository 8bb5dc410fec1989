"""Image decoding shared by every source: files and arrays → uint8 C×S×S with the same PIL steps.

Whatever the source, an image becomes ``convert("RGB"|"L")`` then a bilinear resize to a square
``size`` (skipped when it already is one), so image files, arrays and Python datasets agree.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import KdsearchError, first_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def pil_to_chw(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """A PIL image → uint8 C×size×size (``convert("RGB"|"L")``, bilinear resize to a square)."""
    img = img.convert("RGB" if channels == 3 else "L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def chw_to_pil(x: np.ndarray) -> Image.Image:
    """A uint8 C×H×W array (C = 1 or 3) → PIL image (mode L or RGB)."""
    return Image.fromarray(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0))


def conform_chw(x: np.ndarray, size: int, channels: int) -> np.ndarray:
    """A uint8 C×H×W array at ``channels``×``size``×``size``: as is when it already is, else through PIL."""
    if x.shape == (channels, size, size):
        return x
    return pil_to_chw(chw_to_pil(x), size, channels)


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file → uint8 C×size×size (``convert("RGB"|"L")``, bilinear resize to a square)."""
    with Image.open(path) as img:
        return pil_to_chw(img, size, channels)


def _decode_workers(n: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores, n // 32))


def _each(n: int, one: Callable[[int], None], threads: bool) -> None:
    """``one(i)`` for every i < n, on a few threads (PIL releases the GIL) when ``threads``."""
    workers = _decode_workers(n) if threads else 1
    if workers == 1:
        for i in range(n):
            one(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(n)))


def fill_images(
    n: int, channels: int, size: int, work: Callable[[int], np.ndarray], *, threads: bool = True
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """``out[i] = work(i)`` for every i (on threads unless ``threads`` is False); failures are returned, not raised."""
    out = np.zeros((n, channels, size, size), dtype=np.uint8)
    bad: list[tuple[int, str]] = []

    def one(i: int) -> None:
        try:
            out[i] = work(i)
        except KdsearchError as err:  # already says what is wrong with which item
            bad.append((i, str(err)))
        except MemoryError:  # this machine's problem, not the file's
            raise
        except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt files
            bad.append((i, f"{type(err).__name__}: {first_line(err)}"))

    _each(n, one, threads)
    return out, sorted(bad)


def decode_images(paths: Sequence[Path], size: int, channels: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode ``paths`` into uint8 N×C×size×size; unreadable files stay zero and come back as (index, reason)."""
    return fill_images(len(paths), channels, size, lambda i: decode_image(paths[i], size, channels))


def _probe_image(path: Path) -> None:
    with Image.open(path) as img:
        img.load()  # a full decode: verify() alone passes truncated JPEGs that fail later, mid-trial


def probe_images(paths: Sequence[Path]) -> list[tuple[int, str]]:
    """(index, reason) of the files PIL cannot decode (each decoded once, nothing kept) — for streaming."""
    bad: list[tuple[int, str]] = []

    def one(i: int) -> None:
        try:
            _probe_image(paths[i])
        except MemoryError:  # this machine's problem, not the file's
            raise
        except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt files
            bad.append((i, f"{type(err).__name__}: {first_line(err)}"))

    _each(len(paths), one, threads=True)
    return sorted(bad)


def conform_images(x: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize/convert uint8 N×C×H×W arrays with the same PIL steps as image files."""
    n, c, h, w = x.shape
    if (c, h, w) == (channels, size, size):
        return x
    out, bad = fill_images(n, channels, size, lambda i: conform_chw(x[i], size, channels))
    if bad:
        raise KdsearchError(f"cannot resize image {bad[0][0]}: {bad[0][1]}")
    return out
