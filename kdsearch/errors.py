"""The one exception type for mistakes a user can make (bad spec, missing data, bad checkpoint)."""

from __future__ import annotations


class KdsearchError(Exception):
    """A user-facing error: the message names the problem and the fix; the CLI exits with code 2."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is the host or the GPU running out of memory (torch raises RuntimeErrors for both)."""
    text = str(err).lower()
    return (
        isinstance(err, MemoryError)
        or type(err).__name__ == "OutOfMemoryError"
        or "out of memory" in text
        or "can't allocate memory" in text
    )
