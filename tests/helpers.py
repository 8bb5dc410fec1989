"""Builders shared by several test files (datasets on disk, specs, processes): import them from here, not from
test files."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import pickle
import signal
import struct
import subprocess
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from kdsearch.config.spec import DataSpec

REPO = Path(__file__).resolve().parents[1]  # the repository root (tests/ is one level below it)

COLORS = {"cat": (200, 40, 40), "dog": (40, 60, 220), "HP": (230, 200, 30), "SSA": (20, 160, 90)}


def save_image(path: Path, color: tuple[int, int, int], seed: int, size: tuple[int, int] = (12, 10)) -> Path:
    """A small noisy image of ``color``; the format follows the suffix (PNG, JPEG, …)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color)[None, None] + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def make_class_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """``root/<class>/<i>.png|jpg`` (alternating formats)."""
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            save_image(
                root / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}", COLORS.get(name, (90, 90, 90)), seed + 100 * k + i
            )
    return root


def folder_spec(root: Path, **kw) -> DataSpec:
    fields = {
        "source": "image_folder",
        "root": root,
        "image_size": 8,
        "val_size": 6,
        "test_size": 0.25,
        "labeled": 0,
        "unlabeled": 10,
    } | kw
    return DataSpec(**fields)


HEADER = ["Image Name", "Majority Vote Label", "Number of Annotators who Selected SSA (Out of 7)", "Partition"]


def write_mhist(root: Path, rows: list[list[str]] | None = None, header: list[str] = HEADER) -> Path:
    """``root/annotations.csv`` + ``root/images/*.png``: 30 train (HP/SSA) and 10 test rows by default."""
    if rows is None:
        rows = []
        for i in range(40):
            label = "SSA" if i % 3 == 0 else "HP"
            rows.append([f"MHIST_{i:03d}.png", label, "5", "train" if i < 30 else "test"])
    for i, row in enumerate(rows):
        if row[0] and row[1] in COLORS:
            save_image(root / "images" / row[0], COLORS[row[1]], seed=i)
    with open(root / "annotations.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return root


class Py2Pickler(pickle._Pickler):
    """Writes strings the way Python 2's cPickle did (the real CIFAR-10 batches are Python 2 pickles)."""

    def _binstring(self, raw: bytes) -> None:
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    def save_bytes(self, obj: bytes) -> None:
        self._binstring(obj)

    def save_str(self, obj: str) -> None:
        self._binstring(obj.encode("latin1"))

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def dump_batch(obj: dict, path: Path, py2: bool) -> None:
    if not py2:
        path.write_bytes(pickle.dumps(obj, protocol=2))
        return
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def write_cifar(folder: Path, per_batch: int = 8, n_test: int = 6, meta: bool = True, py2: bool = False) -> Path:
    """The CIFAR-10 python layout: image i has R = i, G = 100, B = 200 (CHW rows of 1024 bytes)."""
    folder.mkdir(parents=True)
    counter = 0
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        data = np.zeros((n, 3072), dtype=np.uint8)
        for j in range(n):
            data[j, :1024], data[j, 1024:2048], data[j, 2048:] = counter % 256, 100, 200
            counter += 1
        labels = [(counter - n + j) % 10 for j in range(n)]
        dump_batch(
            {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}, folder / name, py2
        )
    if meta:
        names = [f"class{i}".encode() for i in range(10)]
        dump_batch({b"label_names": names, b"num_cases_per_batch": per_batch}, folder / "batches.meta", py2)
    return folder


@contextlib.contextmanager
def started(
    cmd: Sequence[str], log: Path, *, with_stdout: bool = False, sigint_ignored: bool = False
) -> Iterator[subprocess.Popen]:
    """``cmd`` running unbuffered, its stderr (and its stdout, ``with_stdout``) written to the file ``log`` (a file,
    not a pipe: nobody reads a pipe while the test polls); killed if it still runs when the block ends.
    ``sigint_ignored``: started with SIGINT ignored, as ``nohup`` or a script's ``&`` start it."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    with open(log, "w") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out if with_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if with_stdout else out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=ignore,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


CHROMIUM_ARGS = [  # headless Debian chromium under playwright, as root, with no network
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path(what: str) -> str:
    """Debian's chromium, or a test failure saying how to install it (``what``: what could not be checked)."""
    import shutil

    import pytest

    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            f"Debian's chromium is not installed, so {what} cannot be checked in a browser. "
            "Run `make test` (it installs chromium with apt), or `sudo apt-get install chromium`."
        )
    return path
