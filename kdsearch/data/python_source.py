"""``data.source = "python"``: the datasets returned by the user's ``data.factory`` (or handed over in Python).

The factory (``"package.module:function"``, called with ``**data.args``) returns map-style datasets
of ``(image, label)`` items (see ``items`` for what an item may be) as

* a dict ``{"train": ..., "val": ..., "test": ..., "classes": [...]}`` (all but ``train`` optional), or
* a tuple ``(train, test)`` or ``(train, val, test)``.

Missing ``val``/``test`` splits are carved from ``train`` with the seeded rules of every source.
Class names: ``classes``, else the train dataset's ``.classes``, else "0", "1", ….
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config.spec import DataSpec
from ..errors import KdsearchError, first_line
from ..nets.imports import import_object
from .datasets import load_datasets
from .items import describe
from .sources import SOURCES
from .store import RawDataset

EXPECTED = (
    "expected a dict {'train': ..., 'val': ..., 'test': ..., 'classes': [...]} (all but 'train' optional) "
    "or a tuple (train, test) or (train, val, test) of map-style datasets"
)
GIVEN = "the datasets handed over from Python"


def call_factory(factory: str, args: dict[str, Any]) -> Any:
    """``factory(**args)`` for ``data.factory``; a raise inside it is one KdsearchError naming it."""
    fn = import_object(factory, field="data.factory")
    if not callable(fn):
        raise KdsearchError(
            f"data.factory = {factory!r} is {describe(fn)}, not a function; name a function returning the datasets"
        )
    try:
        return fn(**args)
    except KdsearchError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's function may raise anything
        raise KdsearchError(f"data.factory = {factory!r} raised {type(err).__name__}: {first_line(err)}") from None


def named_datasets(given: Any, origin: str) -> tuple[dict[str, Any], list[str] | None]:
    """The splits (``train`` and optionally ``val``, ``test``) and class names of what a factory returned."""
    if isinstance(given, Mapping):
        unknown = [k for k in given if k not in ("train", "val", "test", "classes")]
        if "train" not in given or unknown:
            keys = ", ".join(repr(k) for k in given) or "none"
            raise KdsearchError(f"{origin} returned a dict with keys {keys}; {EXPECTED}")
        datasets = {s: given[s] for s in ("train", "val", "test") if given.get(s) is not None}
        classes = given.get("classes")
    elif isinstance(given, tuple) and len(given) in (2, 3):
        datasets = dict(zip(("train", "test") if len(given) == 2 else ("train", "val", "test"), given))
        classes = None
    else:
        raise KdsearchError(f"{origin} returned {describe(given)}; {EXPECTED}")
    if classes is None:
        classes = getattr(datasets["train"], "classes", None)
        if not isinstance(classes, (list, tuple)) or not classes:
            return datasets, None
    elif isinstance(classes, str) or not isinstance(classes, (list, tuple)) or not classes:
        raise KdsearchError(
            f"{origin} returned 'classes' as {describe(classes)}; give a list of class names, one per label"
        )
    return datasets, [str(c) for c in classes]


@SOURCES.register("python")
def load_python(spec: DataSpec, cache_dir: Path | None = None, *, datasets: Any = None) -> RawDataset:
    """The datasets of ``data.factory``, or ``datasets`` (the same shapes) when they are handed over in Python."""
    if datasets is not None:
        given, origin = datasets, GIVEN
    elif spec.factory is None:
        raise KdsearchError(
            'data.source = "python" needs data.factory = "package.module:function", a function returning the '
            "datasets (or hand them over in Python: kdsearch.run_study(..., data={'train': ..., 'test': ...}))"
        )
    else:
        given, origin = call_factory(spec.factory, spec.args), f"data.factory = {spec.factory!r}"
    named, class_names = named_datasets(given, origin)
    return load_datasets(spec, named, class_names, cache_dir, origin=origin)
