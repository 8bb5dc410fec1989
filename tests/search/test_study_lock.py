"""The lock kept in a storage itself (search/study_lock.py), as the gRPC proxy's workers use it: real processes
on one SQLite database, a holder killed while it holds the lock, and lock studies kept out of study listings."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from kdsearch.errors import KdsearchError
from kdsearch.search.storage import StorageLock, open_storage
from kdsearch.search.study import load_study
from kdsearch.search.study_lock import LOCK_PREFIX, StudyLock, is_lock_study

# each process: 15 times, under the lock, read the counter file, pause, write it + 1 (a lost update without the lock)
COUNTER = """
import sys, time
from pathlib import Path
import optuna
from kdsearch.search.study_lock import StudyLock
storage = optuna.storages.RDBStorage(sys.argv[1], engine_kwargs={{"connect_args": {{"timeout": 60}}}})
lock, counter = StudyLock(storage, "count", lease_s={lease}), Path(sys.argv[2])
print("ready", flush=True)
for _ in range({rounds}):
    lock.acquire()
    value = int(counter.read_text())
    time.sleep(0.01)
    counter.write_text(str(value + 1))
    lock.release()
"""


def _processes(tmp_path: Path, n: int, *, rounds: int, lease: float = 60.0) -> list:
    url = f"sqlite:///{tmp_path / 'locks.db'}"
    open_storage(url)  # the schema, once
    (tmp_path / "counter").write_text("0")
    code = COUNTER.format(rounds=rounds, lease=lease)
    return [
        subprocess.Popen(
            [sys.executable, "-c", code, url, str(tmp_path / "counter")], stdout=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]


def test_processes_on_one_storage_take_turns(tmp_path):
    procs = _processes(tmp_path, 3, rounds=15)
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert (tmp_path / "counter").read_text() == "45"  # no update lost: never two holders at once
    storage = open_storage(f"sqlite:///{tmp_path / 'locks.db'}")
    assert storage.get_all_studies() == []  # each release deleted its lock study


def test_a_killed_holder_loses_the_lock_after_its_lease(tmp_path):
    """The holder is SIGKILLed while it holds the lock: its study stays, but its beats stop, and a waiter takes
    the lock over once it has seen them stand still for the lease (on its own clock), then clears the old one."""
    url = f"sqlite:///{tmp_path / 'locks.db'}"
    storage = open_storage(url)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, optuna\n"
            "from kdsearch.search.study_lock import StudyLock\n"
            "lock = StudyLock(optuna.storages.RDBStorage(sys.argv[1]), 'teacher', lease_s=2)\n"
            "lock.acquire(); print('held', flush=True); time.sleep(600)\n",
            url,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = StudyLock(storage, "teacher", lease_s=2)
        assert not waiter.acquire(timeout=1.0)  # alive and beating: not taken over
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        start = time.monotonic()
        assert waiter.acquire(timeout=30)
        assert 1.5 <= time.monotonic() - start < 15
        names = [s.study_name for s in storage.get_all_studies()]
        assert names == [f"{LOCK_PREFIX}teacher:1"]  # the next generation; the dead holder's one is gone
        waiter.release()
        assert storage.get_all_studies() == []
    finally:
        if holder.poll() is None:
            holder.kill()


def test_the_process_threads_queue_locally_and_a_timeout_gives_up(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    first, second = StudyLock(storage, "slot"), StudyLock(storage, "slot")
    assert first.acquire(timeout=1)
    start = time.monotonic()
    assert not second.acquire(timeout=0.3)
    assert 0.25 <= time.monotonic() - start < 5
    first.release()
    assert second.acquire(timeout=1)
    second.release()


def test_storage_lock_uses_the_study_lock_where_no_other_lock_exists():
    storage = optuna.storages.InMemoryStorage()
    lock = StorageLock("grpc://proxy-host:13000", storage, "kdsearch:tiny", ".trials.lock")
    assert lock.where == f"the lock study {LOCK_PREFIX}kdsearch:tiny:* in the storage"
    assert lock.acquire(1)
    assert [s.study_name for s in storage.get_all_studies()] == [f"{LOCK_PREFIX}kdsearch:tiny:0"]
    lock.release()
    assert storage.get_all_studies() == []


def test_lock_studies_are_not_listed_as_studies():
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="tiny")
    lock = StudyLock(storage, "kdsearch:tiny")
    lock.acquire()
    try:
        assert is_lock_study(f"{LOCK_PREFIX}kdsearch:tiny:0") and not is_lock_study("tiny")
        assert load_study(None, storage).study_name == "tiny"  # the only study, lock studies aside
        with pytest.raises(KdsearchError, match=r"it holds: tiny$"):
            load_study("other", storage)
    finally:
        lock.release()


def test_a_holder_whose_lock_study_was_deleted_knows_it_lost_it():
    storage = optuna.storages.InMemoryStorage()
    lock = StudyLock(storage, "slot", lease_s=0.4)  # beats every 0.1 s
    lock.acquire()
    try:
        storage.delete_study(storage.get_study_id_from_name(f"{LOCK_PREFIX}slot:0"))  # as a takeover would
        deadline = time.monotonic() + 5
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.lost
    finally:
        lock.release()  # the study is gone already: no error
