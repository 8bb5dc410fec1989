"""Storage calls that ride out a database or proxy restart: a storage class whose calls are retried, with
backoff, while the error says the server is unreachable (``transient``), for up to ``RETRY_S`` seconds.

A write whose failure leaves it undone (the transaction rolled back, the proxy never reached) is simply done
again. A trial created from a template (a queued retry, an added trial) carries a one-off token, and a retried
creation first looks for a trial with that token: when the server committed and only the answer was lost, that
trial is the answer (created twice, a queued retry would run twice, one finished trial too many). A plain new
trial created twice is a RUNNING trial that nobody claims, which the workers fail once it has been unclaimed for
the grace period (``parallel/beats.py``).
"""

from __future__ import annotations

import copy
import functools
import logging
import random
import threading
import time
import uuid
from typing import Callable, TypeVar

RETRY_S = 300.0  # how long a call keeps retrying while the server is unreachable
_log = logging.getLogger("kdsearch.storage")
T = TypeVar("T")
_depth = threading.local()  # a retried call that calls another one: only the outer one retries
CREATE_TOKEN_ATTR = "kdsearch:create_token"  # system attr: which creation made a trial from a template
CREATE_CALLS = ("create_new_trial", "_create_new_trial")  # (study_id, template_trial) -> trial id / FrozenTrial


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
        return _outermost(lambda: method(self, *args, **kwargs), transient, lambda: where(self))

    return call


def _outermost(call: Callable[[], T], transient: Callable[[BaseException], bool], where: Callable[[], str]) -> T:
    """``call_retrying(call, ...)`` when no retried call of this thread is under way; inside one, ``call()`` once
    (the outer call retries the whole)."""
    if getattr(_depth, "n", 0):
        return call()
    _depth.n = 1
    try:
        return call_retrying(call, transient, where)
    finally:
        _depth.n = 0


def retrying_create(
    method: Callable, transient: Callable[[BaseException], bool], where: Callable[[object], str]
) -> Callable:
    """``create_new_trial`` / ``_create_new_trial`` of a storage class, retried like ``retrying`` and done at most
    once for a template trial: the template carries a new ``CREATE_TOKEN_ATTR``, and a retry first returns the
    trial that already holds that token (what the first try made when only its answer was lost)."""
    frozen = method.__name__.startswith("_")  # _create_new_trial answers the FrozenTrial, the other its id

    @functools.wraps(method)
    def call(self, study_id, template_trial=None):
        if template_trial is None:
            return _outermost(lambda: method(self, study_id), transient, lambda: where(self))
        tagged = copy.copy(template_trial)
        token = uuid.uuid4().hex
        tagged.system_attrs = {**template_trial.system_attrs, CREATE_TOKEN_ATTR: token}
        first = True

        def once():
            nonlocal first
            if not first:
                for t in self.get_all_trials(study_id, deepcopy=False):
                    if t.system_attrs.get(CREATE_TOKEN_ATTR) == token:
                        return t if frozen else t._trial_id
            first = False
            return method(self, study_id, tagged)

        return _outermost(once, transient, lambda: where(self))

    return call


def retrying_class(
    base: type, names: list[str], transient: Callable[[BaseException], bool], where: Callable[[object], str]
) -> type:
    """A subclass of the storage class ``base`` whose methods ``names`` are ``retrying`` (``retrying_create`` for
    the trial creations)."""
    methods = {
        n: (retrying_create if n in CREATE_CALLS else retrying)(getattr(base, n), transient, where) for n in names
    }
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
