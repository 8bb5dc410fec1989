"""A name → object registry filled by decoration, shared by models and methods (timm style)."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import KdsearchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Holds named entries of one kind; ``register`` is a decorator, ``get`` fails with the known names.

    Example::

        MODELS = Registry("model")

        @MODELS.register("light_nn")
        def light_nn(num_classes, in_channels, image_size): ...

        MODELS.get("light_nn")
        MODELS.names("light*")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator adding ``entry`` under ``name``; ``meta`` (e.g. a default feature layer) is kept beside it."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            self._meta[name] = meta
            return entry

        return add

    def meta(self, name: str) -> dict[str, Any]:
        """The keyword arguments ``name`` was registered with."""
        self.get(name)
        return self._meta[name]

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise KdsearchError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style pattern, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
