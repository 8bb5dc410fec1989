"""``data.source = "torchvision"``: a class of ``torchvision.datasets`` named by ``data.dataset``.

The training split is built with ``train=True`` (or ``split="train"``), the test split with
``train=False`` (or ``split="test"``), whichever the class takes (read from its signature); a class
without a test split has one carved (``data.test_size``). ``root`` and ``download`` are passed when
the class takes them, ``data.args`` as extra keyword arguments. The items then take the python
source's path: same checks, conversion, disk cache and streaming.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from pathlib import Path
from typing import Any

from ..config.spec import DataSpec
from ..errors import KdsearchError
from .datasets import load_datasets
from .sources import SOURCES
from .store import RawDataset

log = logging.getLogger(__name__)


def torchvision_class(name: str) -> type:
    """The class ``torchvision.datasets.<name>``; a KdsearchError with close names when there is none."""
    import torchvision.datasets

    found = getattr(torchvision.datasets, name, None)
    if inspect.isclass(found) and not name.startswith("_"):
        return found
    names = [
        n
        for n in getattr(torchvision.datasets, "__all__", dir(torchvision.datasets))
        if inspect.isclass(getattr(torchvision.datasets, n, None))
    ]
    lower = {n.lower(): n for n in names}
    close = [lower[c] for c in difflib.get_close_matches(name.lower(), list(lower), n=5, cutoff=0.5)]
    hint = f"did you mean {', '.join(close)}?" if close else f"it has {', '.join(sorted(names)[:12])}, …"
    raise KdsearchError(f"data.dataset = {name!r} is not a class of torchvision.datasets; {hint}")


def _reason(err: Exception) -> str:
    """torchvision's reason, which comes last in its messages."""
    return (str(err).strip().splitlines() or [type(err).__name__])[-1]


def build_split(cls: type, spec: DataSpec, kwargs: dict[str, Any], *, optional: bool = False, **split: Any) -> Any:
    """``cls(**kwargs, **split)``; one KdsearchError (missing files, bad arguments) when it raises, or None
    when ``optional`` and the class has no such split (torchvision's "Unknown value 'test' for argument split")."""
    name = f"torchvision.datasets.{cls.__name__}"
    try:
        return cls(**kwargs, **split)
    except Exception as err:  # noqa: BLE001 - torchvision raises RuntimeError, OSError, URLError, TypeError, ...
        error = err
    if optional and isinstance(error, ValueError) and "split" in str(error):
        return None
    if isinstance(error, (RuntimeError, OSError)) and not spec.download:
        raise KdsearchError(
            f"{name} is not in {spec.root} ({_reason(error)}); set data.download = true to fetch it there "
            "(needs internet), or point data.root (--data-root) at the folder holding it"
        )
    shown = ", ".join(f"{k}={v!r}" for k, v in {**kwargs, **split}.items())
    fix = "check the internet connection and data.args" if spec.download else "check data.args"
    raise KdsearchError(f"{name}({shown}) raised {type(error).__name__}: {_reason(error)}; {fix}")


def accepted_args(cls: type) -> set[str]:
    """The keyword arguments ``cls`` takes: its own, plus its bases' when it passes ``**kwargs`` on (EMNIST → MNIST)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if klass is object or init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def torchvision_datasets(cls: type, spec: DataSpec) -> dict[str, Any]:
    """The ``train`` and, when the class has one, ``test`` datasets of ``cls``, as ``data`` asks."""
    params = accepted_args(cls)
    own = {"root", "download"} | ({"train"} if "train" in params else {"split"})
    taken = sorted(k for k in spec.args if k in own and k in params)
    if taken:
        raise KdsearchError(
            f"data.args sets {', '.join(taken)}, which kdsearch sets itself for torchvision.datasets.{cls.__name__} "
            "(root and download from data.root and data.download, and the train and test splits); remove it"
        )
    kwargs = dict(spec.args)
    if "root" in params:
        kwargs["root"] = str(spec.root)
    if "download" in params:
        kwargs["download"] = bool(spec.download)
    elif spec.download:
        log.warning("data: torchvision.datasets.%s takes no download argument; data.download is not used", cls.__name__)
    if "train" in params:
        return {
            "train": build_split(cls, spec, kwargs, train=True),
            "test": build_split(cls, spec, kwargs, train=False),
        }
    if "split" in params:
        datasets = {"train": build_split(cls, spec, kwargs, split="train")}
        test = build_split(cls, spec, kwargs, optional=True, split="test")
        if test is not None:
            return {**datasets, "test": test}
    else:
        datasets = {"train": build_split(cls, spec, kwargs)}
    log.info("data: torchvision.datasets.%s has no test split; carving one (data.test_size)", cls.__name__)
    return datasets


@SOURCES.register("torchvision")
def load_torchvision(spec: DataSpec, cache_dir: Path | None = None) -> RawDataset:
    """``torchvision.datasets.<data.dataset>`` read from ``data.root`` (fetched with ``data.download``)."""
    assert spec.dataset is not None  # the spec requires it with this source
    cls = torchvision_class(spec.dataset)
    datasets = torchvision_datasets(cls, spec)
    classes = getattr(datasets["train"], "classes", None)
    class_names = [str(c) for c in classes] if isinstance(classes, (list, tuple)) and classes else None
    return load_datasets(spec, datasets, class_names, cache_dir, origin=f"torchvision.datasets.{cls.__name__}")
