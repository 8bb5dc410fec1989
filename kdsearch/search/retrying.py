"""Storage calls that ride out a database or proxy restart: a storage class whose calls are retried, with
backoff, while the error says the server is unreachable (``transient``), for up to ``RETRY_S`` seconds.

A write whose failure leaves it undone (the transaction rolled back, the proxy never reached) is simply done
again; a trial created twice (the server committed, then the answer was lost) is a RUNNING trial that nobody
claims, which the workers fail once it has been unclaimed for the grace period (``parallel/beats.py``).
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from typing import Callable, TypeVar

RETRY_S = 300.0  # how long a call keeps retrying while the server is unreachable
_log = logging.getLogger("kdsearch.storage")
T = TypeVar("T")
_depth = threading.local()  # a retried call that calls another one: only the outer one retries


def call_retrying(
    call: Callable[[], T],
    transient: Callable[[BaseException], bool],
    where: Callable[[], str],
    retry_s: float = RETRY_S,
) -> T:
    """``call()``, called again with backoff while ``transient(error)``, for up to ``retry_s`` s (then the error)."""
    deadline = time.monotonic() + retry_s
    pause, said = 0.2, False
    while True:
        try:
            return call()
        except Exception as err:
            if not transient(err) or time.monotonic() >= deadline:
                raise
            if not said:
                _log.warning("storage %s unreachable; retrying for up to %.0f s", where(), retry_s)
                said = True
        time.sleep(min(pause * (0.5 + random.random()), max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 5.0)


def retrying(method: Callable, transient: Callable[[BaseException], bool], where: Callable[[object], str]) -> Callable:
    """``method`` (of a storage class) retried while ``transient(error)``; ``where(storage)`` names the server."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if getattr(_depth, "n", 0):
            return method(self, *args, **kwargs)
        _depth.n = 1
        try:
            return call_retrying(lambda: method(self, *args, **kwargs), transient, lambda: where(self))
        finally:
            _depth.n = 0

    return call


def retrying_class(
    base: type, names: list[str], transient: Callable[[BaseException], bool], where: Callable[[object], str]
) -> type:
    """A subclass of the storage class ``base`` whose methods ``names`` are ``retrying``."""
    methods = {n: retrying(getattr(base, n), transient, where) for n in names}
    return type(f"Retrying{base.__name__}", (base,), methods)


def rdb_transient(err: BaseException) -> bool:
    """A database server that is restarting or unreachable (psycopg2's OperationalError, through SQLAlchemy or
    wrapped by Optuna in a StorageInternalError); not a failed query or a constraint."""
    import sqlalchemy

    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, sqlalchemy.exc.OperationalError) or (
            isinstance(err, sqlalchemy.exc.DBAPIError) and err.connection_invalidated
        ):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False
