"""Shared fixtures: tiny study specs on real Fashion-MNIST and hand-made IDX datasets."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

TINY_SPEC = """\
name = "{name}"
output_dir = "{out}"
[data]
root = "{root}"
train_limit = 1500
test_limit = 300
val_size = 300
labeled = 200
unlabeled = 600
[teacher]
epochs = 1
[student]
epochs = {epochs}
[search]
trials = 3
pruner = "{pruner}"
pruner_startup_trials = {startup}
pruner_warmup_epochs = 0
[final]
seeds = 2
baselines = ["scratch", "pseudo_label"]  # untuned_kd left out for speed (tests/test_python_api.py keeps it)
[runtime]
cache_dir = "{cache}"
"""


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST is missing: run `make test` (it installs dataset-fashion-mnist)")
    return FASHION_MNIST


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory) -> Path:
    """One teacher cache for the session, so tiny studies train their teacher once."""
    return tmp_path_factory.mktemp("teacher-cache")


@pytest.fixture
def write_spec(tmp_path, fashion_root, teacher_cache):
    """Write a tiny study TOML into tmp_path; returns its path."""

    def write(
        name: str = "tiny",
        *,
        epochs: int = 2,
        pruner: str = "none",
        startup: int = 0,
        cache: Path | None = None,
        extra: str = "",
    ) -> Path:
        text = TINY_SPEC.format(
            name=name,
            out=tmp_path / "run",
            root=fashion_root,
            epochs=epochs,
            pruner=pruner,
            startup=startup,
            cache=cache or teacher_cache,
        )
        path = tmp_path / f"{name}.toml"
        path.write_text(text + extra)
        return path

    return write


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as a gzipped IDX file, the MNIST format."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return path


@pytest.fixture
def idx_dataset(tmp_path) -> Path:
    """A small random 4-class IDX dataset in the Fashion-MNIST file layout."""
    rng = np.random.default_rng(0)
    root = tmp_path / "idx"
    root.mkdir()
    for part, n in (("train", 400), ("t10k", 100)):
        labels = rng.integers(0, 4, n)
        images = rng.integers(0, 60, (n, 28, 28)) + labels[:, None, None] * 40
        write_idx(root / f"{part}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{part}-labels-idx1-ubyte.gz", labels)
    return root
