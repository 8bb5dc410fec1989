"""Several worker processes (or machines) on one study: in each worker, the trial loop under a cross-process
lock (``TrialSlot``, ``run_worker``) and the detection of trials whose worker died. The local worker processes
of ``run --workers N`` are started and stopped by ``local_workers.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import os
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, ClassVar

import optuna

from ..search.storage import StorageLock, has_heartbeat, in_flight_bound, retry_callback, storage_file
from ..search.study import FINISHED_STATES
from ..signals import shielded, stop_requested
from .beats import SilentTrials, TrialBeats, UnclaimedTrials

# --- in each worker: trials on a study shared with other processes (or machines) ---------------------

WORKER_ATTR = "worker"  # user attr: host, pid, process start time and rank of the process that ran the trial
SURPLUS_ATTR = "surplus"  # user attr of a trial given up before it trained: one more than the study's total


class SurplusTrial(Exception):
    """This worker's new trial would make the study run more than its total: the trial slot was lost while the
    trial was made (a database restart), and another worker filled the same place meanwhile."""


class _QuietSurplus(logging.Filter):
    """Optuna logs a trial whose objective raised with its traceback; a ``SurplusTrial`` gets one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SurplusTrial))


logging.getLogger("optuna.study._optimize").addFilter(_QuietSurplus())


class TrialSlot:
    """A cross-process lock held from "does the study need another trial?" until that trial exists.

    Without it two workers could both see N - 1 finished-or-running trials and both start one.
    SQLite and journal files: a lock file beside the storage (one machine); PostgreSQL: an
    advisory lock on the server (any number of machines); other storages: none, so workers may
    overshoot the trial count by up to one trial each. A killed holder releases it (the OS
    drops its file lock, the server its session).
    """

    # seconds a thread waited for the slot ("slot_wait") and then held it ("slot_hold"), for the soak
    # (``simulate.StorageStats.time_slot``); None: not timed
    timer: ClassVar[Callable[[str, float], None] | None] = None

    def __init__(self, url: str, storage: optuna.storages.BaseStorage, study_name: str) -> None:
        self._held = False
        self._taken_at = 0.0
        self._lock = StorageLock(url, storage, f"kdsearch:{study_name}", ".trials.lock")

    def acquire(self) -> None:
        if not self._held:
            start = time.perf_counter()
            self._lock.acquire()
            self._held = True
            self._taken_at = time.perf_counter()
            if (timer := TrialSlot.timer) is not None:
                timer("slot_wait", self._taken_at - start)

    def release(self) -> None:
        if self._held:
            self._held = False
            if (timer := TrialSlot.timer) is not None:
                timer("slot_hold", time.perf_counter() - self._taken_at)
            self._lock.release()

    def kept(self) -> bool:
        """Whether the slot has been this process's all along since ``acquire`` (not lost to a restart of the
        PostgreSQL server, or taken over from a silent holder): when not, another worker may have counted the
        same free place meanwhile."""
        return self._held and self._lock.held()

    def __enter__(self) -> "TrialSlot":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart; '' if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def worker_identity(rank: int = 0) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()), "rank": rank}


def _process_gone(info: dict) -> bool:
    """True only when ``info`` names a process on this host that no longer runs."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    now = _start_time(info["pid"])
    return bool(info.get("start") and now and now != info["start"])


def is_running(study: optuna.Study, number: int) -> bool:
    """Whether trial ``number`` is RUNNING now, re-read from the storage (another process may have ended it)."""
    return any(t.number == number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def fail_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial | None:
    """Mark RUNNING trial ``number`` FAILED; the trial as the storage then holds it, or None when it had
    already finished (completed, or FAILed by another process: only one process gets the trial)."""
    try:
        return study.tell(number, state=optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:  # finished between tell's read and its write
        return None
    except ValueError:  # "Cannot tell a COMPLETE trial": finished before tell's read
        if is_running(study, number):
            raise  # another ValueError
        return None


def fail_and_requeue(study: optuna.Study, number: int, max_retry: int) -> bool:
    """FAIL RUNNING trial ``number`` and queue it again with the same params (Optuna's retry callback, up to
    ``max_retry`` times); False when it had already finished or another process failed it first (that one queues)."""
    frozen = fail_trial(study, number)
    if frozen is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        retry_callback(max_retry)(study, frozen)  # the FAILed trial as the storage now holds it
    return True


def fail_dead_local_trials(study: optuna.Study, max_retry: int) -> list[int]:
    """For storages without heartbeats (journal): FAIL the running trials whose worker process on
    this host is gone, and queue each again with the same params (up to ``max_retry`` times).

    Trials of workers on other hosts cannot be checked this way; use an RDB storage with heartbeats there.
    """
    return [
        t.number
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if isinstance(info := t.user_attrs.get(WORKER_ATTR), dict)
        and _process_gone(info)
        and fail_and_requeue(study, t.number, max_retry)
    ]


@dataclasses.dataclass(frozen=True)
class WorkerLoop:
    """How a worker's trial loop behaves (``run_worker``): retries, its rank, callbacks after each trial, how
    often it polls while the last trials run elsewhere (``on_wait`` then hears how many), the beats' interval and
    grace period, a ``--max-trials`` budget shared by a process's threads, and ``--stop-when-done``."""

    max_retry: int = 2
    rank: int = 0
    callbacks: tuple = ()
    poll_s: float = 2.0
    on_wait: Callable[[int], None] | None = None
    beat_s: float = 10.0
    grace_s: float = 30.0
    budget: TrialBudget | None = None
    stop_when_done: bool = False
    max_in_flight: int = 0  # start no trial while the study has this many running (0: none; runtime.max_in_flight)

    @classmethod
    def of_runtime(cls, runtime, **settings) -> "WorkerLoop":
        """The loop for a spec's ``runtime`` section (retries, heartbeat interval, grace period) and ``settings``."""
        return cls(
            max_retry=runtime.max_retry,
            beat_s=runtime.heartbeat_interval,
            grace_s=runtime.grace_period,
            max_in_flight=runtime.max_in_flight,
            **settings,
        )


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    total: int,
    slot: TrialSlot,
    *,
    heartbeat: bool,
    loop: WorkerLoop = WorkerLoop(),
    beats: TrialBeats | None = None,
) -> int:
    """Run trials in this process until the study holds ``total`` finished (COMPLETE + PRUNED) trials.

    Before each trial, under ``slot``: fail dead workers' trials (Optuna's heartbeat check; or, when the
    storage has none, dead local processes and, with ``beats``, trials whose beats in the study have stood
    still for ``loop.grace_s`` s: ``beats.py``), then start a trial only when a retry is
    waiting or finished + running < ``total``; otherwise wait for the running ones, since one may
    still die and come back as a retry. ``MaxTrialsCallback`` also stops after the last one.
    Under ``StopSignals`` (signals.py) trials run shielded: only what the objective marks
    ``interruptible()`` (``make_objective``: the training) is interrupted, so Optuna's own storage
    writes (create the trial, record its end) finish, and a Ctrl-C that lands there stops the
    worker right after them (a stop requested before the training starts FAILs the trial). The stop request is also checked between trials, so one whose
    KeyboardInterrupt Python swallowed (raised inside a finalizer) still stops the worker. On the way
    out, this thread's trial, if still RUNNING, is marked FAILED (the process's other trial threads may go on). With ``loop.budget``, stop once it is spent
    (``--max-trials``, shared by a process's K threads); with ``loop.stop_when_done``, stop instead of waiting
    when the last trials run elsewhere. Returns how many trials ran.
    """
    me = worker_identity(loop.rank)
    current: list[int] = []  # the number of the trial this thread runs now
    try:
        return _run_trials(study, objective, total, slot, me, current, heartbeat=heartbeat, loop=loop, beats=beats)
    except BaseException:
        with shielded():
            try:  # this thread's trial only: the process's other trial threads may go on
                if current and is_running(study, current[0]):
                    fail_trial(study, current[0])
            except Exception:  # the storage itself failed: the heartbeat check of a living worker will FAIL it
                pass
        raise


def _refused_end(err: BaseException | None) -> bool:
    """Whether ``err`` is Optuna refusing to record a trial's end because the trial had already finished, or the
    error its own clean-up raised while handling that refusal (``AssertionError: Should not reach.``)."""
    for _ in range(3):
        if err is None:
            return False
        if isinstance(err, optuna.exceptions.UpdateFinishedTrialError) or (
            isinstance(err, ValueError) and str(err).startswith("Cannot tell a ")
        ):
            return True
        err = err.__context__
    return False


@dataclasses.dataclass
class _SharedLooks:
    """What the trial threads of this process share about one study object: when one last looked for dead
    workers' trials, until when they take the study as full (``max_in_flight``), whether that was said."""

    checked_at: float = -math.inf
    full_until: float = 0.0
    said_full: bool = False


_shared_looks: dict[tuple[int, str], _SharedLooks] = {}
_shared_guard = threading.Lock()


def _looks(study: optuna.Study) -> _SharedLooks:
    """This process's ``_SharedLooks`` of ``study``; call it holding ``_shared_guard``."""
    return _shared_looks.setdefault((id(study), study.study_name), _SharedLooks())


def _check_due(study: optuna.Study, every_s: float) -> bool:
    """Whether this process should look for dead workers' trials of ``study`` now: once per ``every_s`` s for all
    the trial threads that share this study object (each look reads every running trial; with K threads, K
    times as often would load the storage for nothing)."""
    now = time.monotonic()
    with _shared_guard:
        looks = _looks(study)
        if now - looks.checked_at < every_s:
            return False
        looks.checked_at = now
        return True


def claiming(objective: Callable[[optuna.Trial], float], rank: int = 0) -> Callable[[optuna.Trial], float]:
    """``objective`` that first records this process as the trial's worker (``WORKER_ATTR``), for a study run
    in-process: other workers then know the trial is claimed (``UnclaimedTrials``) and whose it is."""
    me = worker_identity(rank)

    def run(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, me)
        return objective(trial)

    return run


def _run_trials(study, objective, total, slot, me, current, *, heartbeat, loop, beats) -> int:
    """``run_worker``'s loop (see there)."""
    stop = optuna.study.MaxTrialsCallback(total, states=FINISHED_STATES)
    silent = SilentTrials(loop.grace_s) if beats is not None else None
    unclaimed = UnclaimedTrials(loop.grace_s, WORKER_ATTR)

    def objective_(trial: optuna.Trial) -> float:
        current[:] = [trial.number]
        trial.set_user_attr(WORKER_ATTR, me)
        if not slot.kept():  # lost while the trial was made: another worker may have counted the same place
            _give_up_if_surplus(study, slot, trial, total)
        slot.release()  # the trial exists and counts as RUNNING: the next worker may decide
        if beats is not None:
            beats.add(trial._trial_id)
        try:
            return objective(trial)
        finally:
            if beats is not None:
                beats.remove(trial._trial_id)

    state = optuna.trial.TrialState
    ran = 0
    while True:
        if stop_requested():
            raise KeyboardInterrupt
        if (left := _full_for(study)) > 0:  # a thread of this process found the study full: wait, asking nobody
            time.sleep(min(left, 1.0))
            continue
        with slot:
            if _full_for(study) > 0:  # found full while this thread waited for the slot
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if not _check_due(study, min(5.0, loop.grace_s / 4)):
                    pass  # another thread of this process looked a moment ago
                elif heartbeat:
                    optuna.storages.fail_stale_trials(study)
                    unclaimed.fail_unclaimed(study, fail_trial)
                else:
                    fail_dead_local_trials(study, loop.max_retry)
                    if silent is not None:
                        silent.fail_silent(
                            study, beats.own(), functools.partial(fail_and_requeue, max_retry=loop.max_retry)
                        )
                    unclaimed.fail_unclaimed(study, fail_trial)
            counts = _state_counts(study)
            finished = counts.get(state.COMPLETE, 0) + counts.get(state.PRUNED, 0)
            if finished >= total:
                return ran
            running = counts.get(state.RUNNING, 0)
            full = 0 < loop.max_in_flight <= running
            if not full and (counts.get(state.WAITING, 0) or finished + running < total):
                if loop.budget is not None and not loop.budget.take():
                    return ran
                current.clear()  # set once the trial exists (objective_)
                try:
                    with shielded():
                        study.optimize(objective_, n_trials=1, callbacks=[stop, *loop.callbacks])
                except SurplusTrial as err:
                    print(f"warning: {err}; going on", file=sys.stderr)
                    continue
                except Exception as err:
                    # another worker FAILed this trial while it ran (a write refused, then Optuna refuses to record
                    # its end: ValueError, or its own assertion) or after its last write: a takeover, not its error
                    if not (_refused_end(err) and current and not is_running(study, current[0])):
                        raise
                    print(
                        f"warning: trial {current[0]} was marked FAILED by another worker while it ran here (no "
                        "heartbeat within runtime.grace_period: was this process paused?); it may be retried "
                        "with the same params; going on",
                        file=sys.stderr,
                    )
                ran += 1
                continue
        if full:  # trials are left to start, but the storage holds no more at once: wait for a free place
            _say_full_once(study, loop.max_in_flight)
            # one look per process every few seconds: hundreds of waiting threads each reading the study twice a
            # second would starve the heartbeats
            _mark_full(study, max(loop.poll_s, min(5.0, loop.grace_s / 6)))
            continue
        if loop.stop_when_done:
            return ran
        if loop.on_wait is not None:
            loop.on_wait(running)
        time.sleep(loop.poll_s)


def _state_counts(study: optuna.Study) -> dict[optuna.trial.TrialState, int]:
    """How many of the study's trials are in each state, read from the storage now."""
    return collections.Counter(t.state for t in study.get_trials(deepcopy=False))


def _give_up_if_surplus(study: optuna.Study, slot: TrialSlot, trial: optuna.Trial, total: int) -> None:
    """Count again under a fresh hold of ``slot``: when the study now has more than ``total`` trials finished or
    running, ``trial`` (this worker's, not trained yet) is the one too many: raise ``SurplusTrial`` (Optuna
    then records it FAILED, which counts for nothing)."""
    slot.release()
    slot.acquire()
    counts = _state_counts(study)
    counted = sum(counts.get(s, 0) for s in (*FINISHED_STATES, optuna.trial.TrialState.RUNNING))
    if counted > total:
        why = (
            f"trial {trial.number} was given up before it trained: the trial slot was lost while it was made (was "
            f"the database restarted?) and another worker started a trial for the same place ({counted} finished or "
            f"running of {total})"
        )
        trial.set_user_attr(SURPLUS_ATTR, why)
        raise SurplusTrial(why)


def _mark_full(study: optuna.Study, wait_s: float) -> None:
    with _shared_guard:
        _looks(study).full_until = time.monotonic() + wait_s


def _full_for(study: optuna.Study) -> float:
    """Seconds this process still takes ``study`` as full (``max_in_flight`` trials running); 0 when it should look."""
    with _shared_guard:
        return max(0.0, _looks(study).full_until - time.monotonic())


def _say_full_once(study: optuna.Study, limit: int) -> None:
    """One line per process and study: trial threads wait because the storage's in-flight bound is reached."""
    with _shared_guard:
        looks = _looks(study)
        if looks.said_full:
            return
        looks.said_full = True
    print(
        f"note: {limit} trials are in flight, the most this study runs at once (runtime.max_in_flight; on a SQLite "
        "file, what it holds); the other trial threads wait for a free place. For more, use a journal file or "
        "PostgreSQL (README: Scaling out)",
        file=sys.stderr,
    )


def work_on_study(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    url: str,
    objective: Callable[[optuna.Trial], float],
    total: int,
    loop: WorkerLoop = WorkerLoop(),
) -> int:
    """``run_worker`` with the trial slot and the dead-trial check that the storage at ``url`` supports.

    ``storage`` is the one the study was opened with (``open_storage``/``spec_storage``): Optuna wraps
    an RDB storage, so the study alone does not tell whether it records heartbeats. A server storage
    without Optuna's heartbeats (the gRPC proxy) gets kdsearch's own, every ``loop.beat_s`` s (``beats.py``;
    0: none). Returns how many trials this process ran.
    """
    heartbeat = has_heartbeat(storage)
    loop = dataclasses.replace(loop, max_in_flight=in_flight_bound(url, loop.max_in_flight) or 0)  # SQLite's bound
    beats = None
    if not heartbeat and loop.beat_s and storage_file(url) is None:
        beats = process_beats(storage, loop.beat_s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return run_worker(
            study,
            objective,
            total,
            TrialSlot(url, storage, study.study_name),
            heartbeat=heartbeat,
            loop=loop,
            beats=beats,
        )


class TrialBudget:
    """How many more trials this process may start (``kdsearch worker --max-trials``), shared by its threads."""

    def __init__(self, trials: int) -> None:
        self._left = trials
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Spend one trial; False once none is left."""
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


_process_beats: dict[int, TrialBeats] = {}


def process_beats(storage: optuna.storages.BaseStorage, interval_s: float) -> TrialBeats:
    """The one ``TrialBeats`` of this process for ``storage`` (shared by its K trial threads)."""
    return _process_beats.setdefault(id(storage), TrialBeats(storage, interval_s))
