"""A cross-machine lock kept in an Optuna storage itself, for storages that offer no lock of their own (the gRPC
proxy: no file beside it, no PostgreSQL session behind it).

The lock is a study named ``kdsearch-lock:<name>:<generation>``. Creating a study is the one test-and-set
that every Optuna storage makes atomic (a study name is unique: the loser gets ``DuplicatedStudyError``), so
whoever creates the newest generation holds the lock. The holder bumps a counter on it every ``beat_s`` s
and deletes it on release. A holder that died stops beating: once a waiter has seen the counter unchanged for
``lease_s`` s (on its own clock, so clocks need not agree), it creates the next generation and so takes the
lock over, then deletes the older ones. Lock studies are not kdsearch studies: ``is_lock_study`` tells
them apart for listings.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from typing import Any

import optuna

LOCK_PREFIX = "kdsearch-lock:"
BEAT_ATTR = "beat"
OWNER_ATTR = "owner"

_local_locks: dict[str, threading.Lock] = {}  # one poller per lock and process: K trial threads queue here first
_local_guard = threading.Lock()


def is_lock_study(name: str) -> bool:
    return name.startswith(LOCK_PREFIX)


def _local(name: str) -> threading.Lock:
    with _local_guard:
        return _local_locks.setdefault(name, threading.Lock())


class StudyLock:
    """Mutual exclusion among every process (on any machine) that reaches ``storage``, under ``name``.

    ``acquire(timeout)`` / ``release()``; threads of one process queue on a local lock first, so only one of
    them polls the storage. A holder silent for ``lease_s`` s loses the lock to the next waiter.
    """

    def __init__(
        self, storage: optuna.storages.BaseStorage, name: str, *, lease_s: float = 60.0, beat_s: float | None = None
    ) -> None:
        self._storage = storage
        self._base = f"{LOCK_PREFIX}{name}:"
        self._lease_s = lease_s
        self._beat_s = beat_s if beat_s is not None else lease_s / 4
        self._local = _local(self._base)
        self._study_id: int | None = None
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self._seen: dict[str, tuple[Any, float]] = {}  # lock study → (its counter, when this process first saw it)
        self.lost = False  # the lock was taken over while held (this process was silent for lease_s)

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock, waiting up to ``timeout`` s (None: as long as it takes); whether it is held."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._local.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            if self._take(deadline):
                return True
        except BaseException:
            self._local.release()
            raise
        self._local.release()
        return False

    def _take(self, deadline: float | None) -> bool:
        pause = 0.02
        while True:
            generations = self._generations()
            top = max(generations, default=-1)
            if top < 0 or self._expired(generations[top]):
                try:
                    self._study_id = self._storage.create_new_study(
                        [optuna.study.StudyDirection.MINIMIZE], f"{self._base}{top + 1}"
                    )
                except optuna.exceptions.DuplicatedStudyError:  # another process was faster
                    pass
                else:
                    self._storage.set_study_user_attr(self._study_id, OWNER_ATTR, _owner())  # for people
                    for study in generations.values():  # taken over from a dead holder: clear its study
                        self._delete(study._study_id)
                    self._start_beating()
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 1.5, 0.5)

    def _generations(self) -> dict[int, optuna.study.FrozenStudy]:
        found = {}
        for study in self._storage.get_all_studies():
            if study.study_name.startswith(self._base):
                tail = study.study_name.removeprefix(self._base)
                if tail.isdigit():
                    found[int(tail)] = study
        return found

    def _expired(self, study: optuna.study.FrozenStudy) -> bool:
        beat = study.user_attrs.get(BEAT_ATTR)
        now = time.monotonic()
        seen = self._seen.get(study.study_name)
        if seen is None or seen[0] != beat:
            self._seen = {study.study_name: (beat, now)}
            return False
        return now - seen[1] >= self._lease_s

    def _start_beating(self) -> None:
        self._stop.clear()
        self.lost = False
        study_id = self._study_id

        def beat() -> None:
            count = 0
            while not self._stop.wait(self._beat_s):
                count += 1
                try:
                    self._storage.set_study_user_attr(study_id, BEAT_ATTR, count)
                except KeyError:  # deleted by a process that took the lock over
                    self.lost = True
                    return
                except Exception:  # the storage is briefly unreachable: the next beat tries again
                    pass

        self._beater = threading.Thread(target=beat, name="kdsearch-lock-beat", daemon=True)
        self._beater.start()

    def held(self) -> bool:
        """Whether this process still holds the lock: its generation is still the newest (not taken over since
        ``acquire``); False too when the storage cannot tell now."""
        if self._study_id is None or self.lost:
            return False
        try:
            generations = self._generations()
        except Exception:  # unreachable: take it as lost, so the caller decides again under a fresh hold
            return False
        top = max(generations, default=-1)
        return top >= 0 and generations[top]._study_id == self._study_id

    def release(self) -> None:
        if self._study_id is None:
            return
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
            self._beater = None
        study_id, self._study_id = self._study_id, None
        try:
            self._delete(study_id)
        finally:
            self._local.release()

    def _delete(self, study_id: int) -> None:
        try:
            self._storage.delete_study(study_id)
        except KeyError:  # already gone
            pass


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "thread": threading.current_thread().name}
