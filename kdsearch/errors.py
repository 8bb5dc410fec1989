"""The one exception type for mistakes a user can make (bad spec, missing data, bad checkpoint)."""

from __future__ import annotations


class KdsearchError(Exception):
    """A user-facing error: the message names the problem and the fix; the CLI exits with code 2."""
