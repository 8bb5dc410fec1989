"""The registry of data sources: ``data.source`` → a loader ``(spec, cache_dir) -> RawDataset``.

A source is one module whose loader is decorated with ``@SOURCES.register("name")`` (and imported
by the package's ``__init__``); ``assemble_splits`` turns what it returns into the splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..config.spec import DataSpec
from ..registry import Registry
from .store import RawDataset

Loader = Callable[[DataSpec, Path | None], RawDataset]

SOURCES: Registry[Loader] = Registry("data source")
