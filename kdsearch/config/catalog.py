"""What the spec knows of the shipped methods and models without building anything: names, search spaces, flags.

Validating a study (``spec.py``), ``kdsearch --help`` and a spec error must not wait for torch, so this module
imports nothing heavy. ``distill/methods.py`` and ``nets/models.py`` hold the code (losses, builders) and check at import that
their registries and this catalog agree (``check_catalog``): a shipped method or model is added in both places,
and a difference is an import error naming it.

Names registered at run time from the user's Python code (``@METHODS.register``, ``@MODELS.register``) are known
too: registering needs ``kdsearch.distill.methods`` / ``kdsearch.nets.models``, so once one of them is imported, the lookups
below (``method_info``, ``method_names``, ``model_names``) read its live registry; before that, only the
catalog can hold the name, and nothing is imported to find out.

Example::

    method_info("kd").space["temperature"]  # ParamRange(low=0.5, high=20.0, log=True)
    searchable_method_names()  # ['cosine', 'dkd', 'hint', 'kd', 'lskd']
    is_model("resnet18")  # True
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from ..registry import Registry


@dataclass(frozen=True)
class ParamRange:
    """A searched float parameter: sampled in [low, high], log-uniform when ``log``."""

    low: float
    high: float
    log: bool = False

    @property
    def fixed(self) -> bool:
        """A single value (``low == high``): set on every trial, not searched."""
        return self.low == self.high


@dataclass(frozen=True)
class MethodInfo:
    """A method's declaration without its loss: the default search ranges and the flags the training loop
    reads (the class variables of the same names on ``kdsearch.distill.methods.Method``, documented there)."""

    space: Mapping[str, ParamRange] = field(default_factory=dict)
    needs_teacher: bool = True
    needs_features: bool = False
    min_classes: int = 2
    searchable: bool = True  # False for the baselines of the final comparison

    @classmethod
    def of(cls, method: Any) -> MethodInfo:
        """The declaration of a method class (or anything with the same attributes)."""
        return cls(
            space=dict(method.space),
            needs_teacher=method.needs_teacher,
            needs_features=method.needs_features,
            min_classes=method.min_classes,
            searchable=method.searchable,
        )


_LOG_T = ParamRange(0.5, 20.0, log=True)
_FEATURE = MethodInfo(space={"feature_weight": ParamRange(0.01, 10.0, log=True)}, needs_features=True)

METHOD_CATALOG: Mapping[str, MethodInfo] = MappingProxyType(
    {
        "scratch": MethodInfo(needs_teacher=False, searchable=False),
        "pseudo_label": MethodInfo(searchable=False),
        "kd": MethodInfo(space={"temperature": _LOG_T, "alpha": ParamRange(0.0, 1.0)}),
        "lskd": MethodInfo(space={"temperature": _LOG_T, "alpha": ParamRange(0.001, 1.0, log=True)}, min_classes=3),
        "dkd": MethodInfo(
            space={
                "temperature": _LOG_T,
                "alpha_tckd": ParamRange(0.1, 4.0, log=True),
                "beta": ParamRange(0.5, 16.0, log=True),
                "warmup_epochs": ParamRange(1.0, 1.0),
            },
            min_classes=3,
        ),
        "cosine": _FEATURE,
        "hint": _FEATURE,
    }
)
"""Every method of ``kdsearch.distill.methods``, by name: its default search space (the one place it is written; the
method classes read it, and their docstrings say why the ranges are these) and flags."""

TORCHVISION_MODELS: Mapping[str, str] = MappingProxyType(
    {  # the torchvision architectures kdsearch builds (weights=None), with their feature layer
        "resnet18": "layer4",
        "resnet34": "layer4",
        "resnet50": "layer4",
        "densenet121": "features",
        "mobilenet_v2": "features",
        "mobilenet_v3_small": "features",
        "efficientnet_b0": "features",
    }
)

MODEL_CATALOG: Mapping[str, str] = MappingProxyType(
    {  # name → the module path feature methods (cosine, hint) tap by default
        # the seeds' small nets
        "bn_cnn": "features",
        "deep_nn": "features",
        "light_nn": "features",
        "keras_mnist_teacher": "features",
        "keras_mnist_student": "features",
        "cnn_big": "features",
        "cnn_small": "features",
        "conv3_student": "features",
        **TORCHVISION_MODELS,
    }
)
"""Every model of ``kdsearch.nets.models``' registry, by name: its default feature layer."""

WIDTH_MODELS = frozenset(
    {"bn_cnn", "deep_nn", "light_nn", "keras_mnist_teacher", "keras_mnist_student", "cnn_small", "conv3_student"}
)
"""The seed nets that take a channel multiplier ``arch_args = { width = 0.5 }`` (their only argument)."""


def _live(module: str, registry: str) -> Registry | None:
    """The registry ``kdsearch.<module>.<registry>`` if that module is already imported, else None (then nothing
    can have been registered in it at run time, and importing it would import torch)."""
    loaded = sys.modules.get(f"kdsearch.{module}")
    return getattr(loaded, registry, None) if loaded is not None else None


def method_info(name: str) -> MethodInfo | None:
    """The declaration of method ``name`` (shipped or registered at run time); None when unknown."""
    live = _live("distill.methods", "METHODS")
    if live is not None and name in live:
        return MethodInfo.of(live.get(name))
    return METHOD_CATALOG.get(name)


def method_names() -> list[str]:
    """Every known method, sorted: the catalog's and those registered at run time."""
    live = _live("distill.methods", "METHODS")
    return sorted({*METHOD_CATALOG, *(live or ())})


def searchable_method_names() -> list[str]:
    """Methods a study may search over (all but the scratch and pseudo-label baselines), sorted."""
    return [n for n in method_names() if method_info(n).searchable]  # type: ignore[union-attr]


def model_names() -> list[str]:
    """Every known registry model, sorted: the catalog's and those registered at run time."""
    live = _live("nets.models", "MODELS")
    return sorted({*MODEL_CATALOG, *(live or ())})


def is_model(name: str) -> bool:
    """Whether ``name`` is a registry model (shipped or registered at run time)."""
    live = _live("nets.models", "MODELS")
    return name in MODEL_CATALOG or (live is not None and name in live)


def check_catalog(registry: Registry, catalog: Mapping[str, Any], describe: Callable[[str], Any]) -> None:
    """RuntimeError unless ``registry`` and ``catalog`` hold the same names and ``describe(name)`` (what the
    registered entry declares) equals ``catalog[name]`` for each. The registries' modules run it at import,
    before anything can be registered at run time."""
    problems = [f"{name!r} is registered but not in the catalog" for name in registry if name not in catalog]
    problems += [f"{name!r} is in the catalog but not registered" for name in catalog if name not in registry]
    problems += [
        f"{name!r} is registered as {describe(name)!r} but the catalog says {catalog[name]!r}"
        for name in registry
        if name in catalog and describe(name) != catalog[name]
    ]
    if problems:
        raise RuntimeError(
            f"the {registry.kind} registry and kdsearch/config/catalog.py disagree: {'; '.join(problems)}. Specs are "
            "validated against the catalog (torch-free), so change both"
        )
