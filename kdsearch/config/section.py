"""The base of every spec section, and the bounds and the import-path rule the sections share."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

MAX_SEED = 2**31 - 1  # seeds plus trial numbers stay within what numpy and torch accept
MAX_PARAM = 1e6  # search ranges beyond this overflow the losses (T² of a huge T)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _expand_home(cls, value: object) -> object:
        """``~/data`` in any path field means the home folder, as in a shell."""
        return value.expanduser() if isinstance(value, Path) else value


def is_import_path(name: str) -> bool:
    """Whether ``name`` reads as ``package.module:attribute`` (a user's callable), not a registry name."""
    module, sep, attr = name.partition(":")
    return (
        bool(sep)
        and all(p.isidentifier() for p in module.split("."))
        and all(p.isidentifier() for p in attr.split("."))
    )
