"""Heartbeats of running trials kept in the study itself, for storages without Optuna's heartbeat table (the gRPC
proxy): a worker on any machine can then tell a dead worker's trial from a slow one.

Each process beats its running trials from one thread: a counter in the trial's system attr ``kdsearch:beat``
every ``interval_s`` s. A checker FAILs a RUNNING trial whose counter it has seen unchanged for ``grace_s`` s on
its own clock (clocks need not agree), and queues it again with the same params (``workers.fail_and_requeue``).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import optuna

BEAT_ATTR = "kdsearch:beat"


class TrialBeats:
    """This process's running trials and the one thread that beats them (started with the first ``add``)."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval_s: float) -> None:
        self._storage = storage
        self._interval_s = interval_s
        self._trials: dict[int, int] = {}  # trial id → its count
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, trial_id: int) -> None:
        """Beat ``trial_id`` from now on (once at once, so a fresh trial is never silent)."""
        with self._lock:
            self._trials[trial_id] = 0
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kdsearch-trial-beats", daemon=True)
                self._thread.start()
        self._beat(trial_id)

    def own(self) -> set[int]:
        """The trials this process beats now."""
        with self._lock:
            return set(self._trials)

    def remove(self, trial_id: int) -> None:
        with self._lock:
            self._trials.pop(trial_id, None)

    def _beat(self, trial_id: int) -> None:
        with self._lock:
            if trial_id not in self._trials:
                return
            self._trials[trial_id] += 1
            count = self._trials[trial_id]
        try:
            self._storage.set_trial_system_attr(trial_id, BEAT_ATTR, count)
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError, RuntimeError):  # finished meanwhile
            self.remove(trial_id)
        except Exception:  # the storage is briefly unreachable: the next beat tries again
            pass

    def _run(self) -> None:
        while True:
            time.sleep(self._interval_s)
            with self._lock:
                ids = list(self._trials)
            for trial_id in ids:
                self._beat(trial_id)


class SilentTrials:
    """What this process has seen of other trials' beats: ``fail_silent`` FAILs and requeues the silent ones."""

    def __init__(self, grace_s: float) -> None:
        self._grace_s = grace_s
        self._seen: dict[int, tuple[object, float]] = {}  # trial id → (its count, when first seen at that count)

    def silent(self, study: optuna.Study, own: set[int]) -> list[optuna.trial.FrozenTrial]:
        """RUNNING trials, not in ``own``, whose counter has stood still for ``grace_s`` s as seen from here."""
        now = time.monotonic()
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        seen: dict[int, tuple[object, float]] = {}
        found = []
        for t in running:
            count = t.system_attrs.get(BEAT_ATTR)
            before = self._seen.get(t._trial_id)
            seen[t._trial_id] = before if before is not None and before[0] == count else (count, now)
            if t._trial_id not in own and now - seen[t._trial_id][1] >= self._grace_s:
                found.append(t)
        self._seen = seen
        return found

    def fail_silent(
        self, study: optuna.Study, own: set[int], fail_and_requeue: Callable[[optuna.Study, int], bool]
    ) -> list[int]:
        """FAIL and queue again the silent trials (``silent``) with ``fail_and_requeue`` (``workers.fail_and_requeue``:
        False when the trial finished or another process failed it first); the numbers of those it failed."""
        return [t.number for t in self.silent(study, own) if fail_and_requeue(study, t.number)]


class UnclaimedTrials:
    """RUNNING trials that no worker has claimed (no ``claim_attr`` user attr) for ``grace_s`` s as seen from here:
    created twice by a retried call whose first answer was lost, or by a process that died at once. Nobody runs
    them, so ``fail_unclaimed`` FAILs them (without a retry: they never had a trial's params)."""

    def __init__(self, grace_s: float, claim_attr: str) -> None:
        self._grace_s = grace_s
        self._claim_attr = claim_attr
        self._seen: dict[int, float] = {}

    def fail_unclaimed(
        self, study: optuna.Study, fail_trial: Callable[[optuna.Study, int], optuna.trial.FrozenTrial | None]
    ) -> list[int]:
        now = time.monotonic()
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        seen = {t._trial_id: self._seen.get(t._trial_id, now) for t in running if self._claim_attr not in t.user_attrs}
        self._seen = seen
        failed = []
        for t in running:
            if t._trial_id in seen and now - seen[t._trial_id] >= self._grace_s and fail_trial(study, t.number):
                failed.append(t.number)
        return failed
