"""Several worker processes (or machines) on one study.

In each worker: the trial loop under a cross-process lock (``TrialSlot``, ``run_worker``) and the
detection of trials whose worker died. For ``run --workers N``: which device and threads each local
worker gets (``worker_plan``), starting the ``kdsearch worker`` processes and stopping them.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import optuna

from ..config.spec import StudySpec
from ..errors import KdsearchError
from ..search.storage import STORAGE_ENV, StorageLock, has_heartbeat, retry_callback, shown_url, storage_file
from ..search.study import FINISHED_STATES, finished_count
from ..signals import StopSignals, StudyInterrupted, shielded, stop_requested
from .beats import SilentTrials, TrialBeats, UnclaimedTrials

# --- in each worker: trials on a study shared with other processes (or machines) ---------------------

WORKER_ATTR = "worker"  # user attr: host, pid, process start time and rank of the process that ran the trial


class TrialSlot:
    """A cross-process lock held from "does the study need another trial?" until that trial exists.

    Without it two workers could both see N - 1 finished-or-running trials and both start one.
    SQLite and journal files: a lock file beside the storage (one machine); PostgreSQL: an
    advisory lock on the server (any number of machines); other storages: none, so workers may
    overshoot the trial count by up to one trial each. A killed holder releases it (the OS
    drops its file lock, the server its session).
    """

    def __init__(self, url: str, storage: optuna.storages.BaseStorage, study_name: str) -> None:
        self._held = False
        self._lock = StorageLock(url, storage, f"kdsearch:{study_name}", ".trials.lock")

    def acquire(self) -> None:
        if not self._held:
            self._lock.acquire()
            self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()

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


def fail_dead_local_trials(study: optuna.Study, max_retry: int) -> list[int]:
    """For storages without heartbeats (journal): FAIL the running trials whose worker process on
    this host is gone, and queue each again with the same params (up to ``max_retry`` times).

    Trials of workers on other hosts cannot be checked this way; use an RDB storage with heartbeats there.
    """
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        info = t.user_attrs.get(WORKER_ATTR)
        if not isinstance(info, dict) or not _process_gone(info):
            continue
        frozen = fail_trial(study, t.number)
        if frozen is None:  # another worker got there first: it queues the retry
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            retry_callback(max_retry)(study, frozen)  # the FAILed trial as the storage now holds it
        failed.append(t.number)
    return failed


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    total: int,
    slot: TrialSlot,
    *,
    heartbeat: bool,
    max_retry: int = 2,
    rank: int = 0,
    callbacks: tuple = (),
    poll_s: float = 2.0,
    on_wait: Callable[[int], None] | None = None,
    beats: TrialBeats | None = None,
    grace_s: float = 30.0,
    budget: TrialBudget | None = None,
    stop_when_done: bool = False,
) -> int:
    """Run trials in this process until the study holds ``total`` finished (COMPLETE + PRUNED) trials.

    Before each trial, under ``slot``: fail dead workers' trials (Optuna's heartbeat check; or, when the
    storage has none, dead local processes and, with ``beats``, trials whose beats in the study have stood
    still for ``grace_s`` s: ``beats.py``), then start a trial only when a retry is
    waiting or finished + running < ``total``; otherwise wait for the running ones, since one may
    still die and come back as a retry. ``MaxTrialsCallback`` also stops after the last one.
    Under ``StopSignals`` (signals.py) trials run shielded: only what the objective marks
    ``interruptible()`` (``make_objective``: the training) is interrupted, so Optuna's own storage
    writes (create the trial, record its end) finish, and a Ctrl-C that lands there stops the
    worker right after them (a stop requested before the training starts FAILs the trial). The stop request is also checked between trials, so one whose
    KeyboardInterrupt Python swallowed (raised inside a finalizer) still stops the worker. On the way
    out, this thread's trial, if still RUNNING, is marked FAILED (the process's other trial threads may go on). With ``budget``, stop once it is spent
    (``--max-trials``, shared by a process's K threads); with ``stop_when_done``, stop instead of waiting
    when the last trials run elsewhere. Returns how many trials ran.
    """
    me = worker_identity(rank)
    current: list[int] = []  # the number of the trial this thread runs now
    try:
        return _run_trials(
            study,
            objective,
            total,
            slot,
            me,
            current,
            heartbeat=heartbeat,
            max_retry=max_retry,
            callbacks=callbacks,
            poll_s=poll_s,
            on_wait=on_wait,
            beats=beats,
            grace_s=grace_s,
            budget=budget,
            stop_when_done=stop_when_done,
        )
    except BaseException:
        with shielded():
            try:  # this thread's trial only: the process's other trial threads may go on
                if current and is_running(study, current[0]):
                    fail_trial(study, current[0])
            except Exception:  # the storage itself failed: the heartbeat check of a living worker will FAIL it
                pass
        raise


_checked_at: dict[tuple[int, str], float] = {}
_checked_guard = threading.Lock()


def _check_due(study: optuna.Study, every_s: float) -> bool:
    """Whether this process should look for dead workers' trials of ``study`` now: once per ``every_s`` s for all
    the trial threads that share this study object (each look reads every running trial; with K threads, K
    times as often would load the storage for nothing)."""
    key = (id(study), study.study_name)
    now = time.monotonic()
    with _checked_guard:
        if now - _checked_at.get(key, -math.inf) < every_s:
            return False
        _checked_at[key] = now
        return True


def claiming(objective: Callable[[optuna.Trial], float], rank: int = 0) -> Callable[[optuna.Trial], float]:
    """``objective`` that first records this process as the trial's worker (``WORKER_ATTR``), for a study run
    in-process: other workers then know the trial is claimed (``UnclaimedTrials``) and whose it is."""
    me = worker_identity(rank)

    def run(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, me)
        return objective(trial)

    return run


def _run_trials(
    study,
    objective,
    total,
    slot,
    me,
    current,
    *,
    heartbeat,
    max_retry,
    callbacks,
    poll_s,
    on_wait,
    beats,
    grace_s,
    budget,
    stop_when_done,
) -> int:
    """``run_worker``'s loop (see there)."""
    stop = optuna.study.MaxTrialsCallback(total, states=FINISHED_STATES)
    silent = SilentTrials(grace_s) if beats is not None else None
    unclaimed = UnclaimedTrials(grace_s, WORKER_ATTR)

    taken: list[int] = []  # the number of this worker's trial that another worker FAILED meanwhile

    returned: list[int] = []  # the trial whose objective returned a value

    def objective_(trial: optuna.Trial) -> float:
        taken.clear()
        returned.clear()
        current[:] = [trial.number]
        trial.set_user_attr(WORKER_ATTR, me)
        slot.release()  # the trial exists and counts as RUNNING: the next worker may decide
        if beats is not None:
            beats.add(trial._trial_id)
        try:
            value = objective(trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # a write of the running trial was refused
            taken.append(trial.number)
            raise
        finally:
            if beats is not None:
                beats.remove(trial._trial_id)
        if not is_running(study, trial.number):  # failed elsewhere after the last write
            taken.append(trial.number)
        returned[:] = [trial.number]  # the objective ended well: a refused end is a takeover, not its error
        return value

    state = optuna.trial.TrialState
    ran = 0
    while True:
        if stop_requested():
            raise KeyboardInterrupt
        with slot:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if not _check_due(study, min(5.0, grace_s / 4)):
                    pass  # another thread of this process looked a moment ago
                elif heartbeat:
                    optuna.storages.fail_stale_trials(study)
                    unclaimed.fail_unclaimed(study, fail_trial)
                else:
                    fail_dead_local_trials(study, max_retry)
                    if silent is not None:
                        silent.fail_silent(study, beats.own(), max_retry, fail_trial)
                    unclaimed.fail_unclaimed(study, fail_trial)
            counts: dict = {}
            for t in study.get_trials(deepcopy=False):
                counts[t.state] = counts.get(t.state, 0) + 1
            finished = counts.get(state.COMPLETE, 0) + counts.get(state.PRUNED, 0)
            if finished >= total:
                return ran
            if counts.get(state.WAITING, 0) or finished + counts.get(state.RUNNING, 0) < total:
                if budget is not None and not budget.take():
                    return ran
                try:
                    with shielded():
                        study.optimize(objective_, n_trials=1, callbacks=[stop, *callbacks])
                except Exception:  # Optuna then refuses to record the end (ValueError, or its own assertion)
                    if not taken and returned and not is_running(study, returned[0]):
                        taken.append(returned[0])  # failed elsewhere between our last look and the end's write
                    if not taken:
                        raise
                    print(
                        f"warning: trial {taken[0]} was marked FAILED by another worker while it ran here (no "
                        "heartbeat within runtime.grace_period: was this process paused?); it may be retried "
                        "with the same params; going on",
                        file=sys.stderr,
                    )
                ran += 1
                continue
        if stop_when_done:
            return ran
        if on_wait is not None:
            on_wait(counts.get(state.RUNNING, 0))
        time.sleep(poll_s)


def work_on_study(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    url: str,
    objective: Callable[[optuna.Trial], float],
    total: int,
    *,
    max_retry: int = 2,
    rank: int = 0,
    callbacks: tuple = (),
    poll_s: float = 2.0,
    on_wait: Callable[[int], None] | None = None,
    beat_s: float = 10.0,
    grace_s: float = 30.0,
    budget: TrialBudget | None = None,
    stop_when_done: bool = False,
) -> int:
    """``run_worker`` with the trial slot and the dead-trial check that the storage at ``url`` supports.

    ``storage`` is the one the study was opened with (``open_storage``/``spec_storage``): Optuna wraps
    an RDB storage, so the study alone does not tell whether it records heartbeats. A server storage
    without Optuna's heartbeats (the gRPC proxy) gets kdsearch's own, every ``beat_s`` s (``beats.py``;
    0: none). The other arguments are ``run_worker``'s. Returns how many trials this process ran.
    """
    heartbeat = has_heartbeat(storage)
    beats = None
    if not heartbeat and beat_s and storage_file(url) is None:
        beats = process_beats(storage, beat_s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return run_worker(
            study,
            objective,
            total,
            TrialSlot(url, storage, study.study_name),
            heartbeat=heartbeat,
            max_retry=max_retry,
            rank=rank,
            callbacks=callbacks,
            poll_s=poll_s,
            on_wait=on_wait,
            beats=beats,
            grace_s=grace_s,
            budget=budget,
            stop_when_done=stop_when_done,
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


# --- local worker processes: `kdsearch run --workers N` ---------------------------------------------


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_count(workers: int, device) -> int:
    """``--workers``: as given; 0 means one per visible GPU (1 on a CPU-only machine)."""
    if workers:
        return workers
    return max(1, len(visible_gpus())) if device.type == "cuda" else 1


def worker_plan(spec, device, workers: int, threads: Optional[int] = None) -> list[tuple[dict[str, str], str, int]]:
    """(environment overrides, --device, --threads) of each local worker.

    ``cuda``/``auto`` on a GPU machine: worker i sees only GPU i (round robin when there are more
    workers than GPUs); ``cuda:N``: all on GPU N; CPU: the cores split evenly, at least 1 thread each.
    """
    per = threads or spec.runtime.threads or max(1, len(os.sched_getaffinity(0)) // workers)
    if device.type == "cuda" and device.index is None:
        gpus = visible_gpus()
        return [({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}, "cuda", per) for i in range(workers)]
    return [({}, str(device), per) for _ in range(workers)]


def worker_env(env: dict[str, str], url: str) -> dict[str, str]:
    """The environment of a local worker process: this one's, its device settings ``env``, and the storage URL in
    ``KDSEARCH_STORAGE`` (the ``--storage`` default), so that a password never appears in a command line."""
    return {**os.environ, **env, STORAGE_ENV: url, "PYTHONUNBUFFERED": "1"}


def worker_command(
    spec: StudySpec,
    path: Path,
    device: str,
    threads: int,
    total: int,
    rank: int,
    overrides: Sequence[str] = (),
    *,
    debug: bool = False,
) -> list[str]:
    """The ``kdsearch worker`` command line of local worker ``rank``: join ``spec.name`` in the study's storage
    (or create it from the spec file at ``path``) and run trials until it holds ``total`` finished ones,
    stopping like on Ctrl-C if this process dies (``--parent-pid``). The URL is not on it (``ps`` shows command
    lines to every user): the worker reads it from ``KDSEARCH_STORAGE`` (``worker_env``)."""
    return [
        sys.executable,
        "-m",
        "kdsearch.cli",
        *(["--debug"] if debug else []),
        "worker",
        "--spec",
        str(path),
        "--study",
        spec.name,
        "--data-root",
        str(spec.data.root),
        "--device",
        device,
        "--threads",
        str(threads),
        "--trials",
        str(total),
        "--rank",
        str(rank),
        "--parent-pid",
        str(os.getpid()),
        *(arg for o in overrides for arg in ("--set", o)),
    ]


def start_workers(
    spec: StudySpec,
    path: Path,
    url: str,
    plan: list[tuple[dict[str, str], str, int]],
    *,
    total: int,
    logs: Path,
    overrides: Sequence[str] = (),
    debug: bool = False,
) -> list[tuple[int, subprocess.Popen, Path]]:
    """Start one ``kdsearch worker`` process per entry of ``plan`` (``worker_plan``); (rank, process, log) of each.

    Worker ``rank`` writes stdout and stderr to ``logs/worker-<rank>.log``. Each runs in its own
    session, so a Ctrl-C in the terminal reaches the workers only once, forwarded by ``stop_workers``.
    """
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[int, subprocess.Popen, Path]] = []
    for rank, (env, device, n_threads) in enumerate(plan):
        cmd = worker_command(spec, path, device, n_threads, total, rank, overrides, debug=debug)
        log = logs / f"worker-{rank}.log"
        with open(log, "w") as out:  # own session: Ctrl-C reaches the workers once, forwarded by us
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=worker_env(env, url),
            )
        procs.append((rank, proc, log))
    return procs


def wait_for_workers(
    procs: list[tuple[int, subprocess.Popen, Path]],
    stop_requested: Callable[[], bool],
    on_poll: Callable[[], None],
    poll_s: float = 1.0,
) -> None:
    """Return when every worker process has exited; raise KeyboardInterrupt once ``stop_requested()``.

    Checks every ``poll_s`` s and calls ``on_poll`` after each pause (e.g. to advance a progress bar).
    """
    while any(p.poll() is None for _, p, _ in procs):
        if stop_requested():
            raise KeyboardInterrupt
        time.sleep(poll_s)
        on_poll()


def failed_workers(procs: list[tuple[int, subprocess.Popen, Path]]) -> list[tuple[int, int, Path]]:
    """(rank, exit code, log) of each worker process that exited with a non-zero code."""
    return [(rank, p.returncode, log) for rank, p, log in procs if p.returncode != 0]


def stop_workers(procs: list, patience_s: float = 60.0, resend_s: float = 15.0) -> None:
    """SIGINT to each running worker, again every ``resend_s`` (in case one swallowed it), SIGKILL after ``patience_s``."""
    deadline = time.time() + patience_s
    try:
        while time.time() < deadline:
            alive = [p for p in procs if p.poll() is None]
            if not alive:
                return
            for p in alive:
                p.send_signal(signal.SIGINT)
            resend = min(deadline, time.time() + resend_s)
            for p in alive:
                try:
                    p.wait(timeout=max(0.1, resend - time.time()))
                except subprocess.TimeoutExpired:
                    pass
    except KeyboardInterrupt:  # a second Ctrl-C: no more patience
        pass
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def run_worker_processes(
    spec, path, url, study, dev, workers: int, trials: int, threads, overrides, resume: str, console, debug: bool
) -> bool:
    """``run --workers N``: start N ``kdsearch worker`` processes, show one progress bar until the study holds
    ``trials`` more finished trials, stop them on Ctrl-C (``StudyInterrupted``), report each failed worker's log.

    Returns False when a worker failed and the study holds fewer trials than asked; a KdsearchError when every
    worker failed before any trial completed."""
    echo = console.echo
    base = finished_count(study)
    total = base + trials
    logs = spec.resolved_output_dir() / "workers"
    plan = worker_plan(spec, dev, workers, threads)
    procs = start_workers(spec, path, url, plan, total=total, logs=logs, overrides=overrides, debug=debug)
    where = ", ".join(f"{d}{' (GPU ' + e['CUDA_VISIBLE_DEVICES'] + ')' if e else ''}" for e, d, _ in plan)
    echo(
        f"started {workers} workers ({where}; {plan[0][2]} thread{'s' * (plan[0][2] != 1)} each) until the study "
        f"holds {total} finished trials; logs in {logs}"
    )
    bar = console.progress(trials, f"trials ({workers} workers)", "trial")

    def advance() -> None:
        bar.update(max(0, min(finished_count(study) - base, trials) - bar.n))

    with StopSignals() as stop:  # Ctrl-C, or a scheduler's TERM: stop the workers
        try:
            wait_for_workers(procs, lambda: stop.requested, advance)
        except KeyboardInterrupt:
            bar.close()
            echo("\ninterrupted: stopping the workers (each marks its running trial FAILED)...", err=True)
            stop_workers([p for _, p, _ in procs])
            raise StudyInterrupted(
                f"{finished_count(study)} finished trials are kept in {shown_url(url)}.\nresume with: {resume}"
            ) from None
    advance()
    bar.close()
    failed = failed_workers(procs)
    for rank, rc, log in failed:
        tail = "\n  ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
        echo(f"worker {rank} exited with code {rc}; the end of {log}:\n  {tail}", err=True)
    done = finished_count(study)
    if (
        failed
        and len(failed) == len(procs)
        and not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ):
        raise KdsearchError(
            f"every worker failed before a trial completed (see above); the study holds {done} finished trials"
        )
    if done < total:
        echo(f"warning: the study holds {done} of {total} finished trials", err=True)
    return not (failed and done < total)
