"""Optuna storage by URL: SQLite (WAL, busy timeout, schema lock), journal files, PostgreSQL; heartbeats."""

from __future__ import annotations

import functools
import re
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
from sqlalchemy.exc import SQLAlchemyError

from ..config.spec import StudySpec
from ..errors import KdsearchError, first_line

ARTIFACT_DIR = (
    "artifacts"  # the default artifact store: <output_dir>/artifacts (teacher weights, report); the dashboard serves it
)


# a process's connections to a database server, whatever its K trial threads: at most 6, reused (4 starved
# the heartbeats of 64 threads at 512 in flight) (the soak test found
# one per thread otherwise, and PostgreSQL's default limit is 100); checked before use, so a restarted server is
# reconnected to instead of failing the next call; a thread waits up to pool_timeout s for a free one
SERVER_POOL = {"pool_size": 2, "max_overflow": 4, "pool_timeout": 600, "pool_pre_ping": True}

STORAGE_ENV = "KDSEARCH_STORAGE"  # --storage's value when the option is not given: keeps a password out of argv


def shown_url(url: str) -> str:
    """``url`` as it may be printed, logged or stored in a study: a password replaced by ``***``
    (``postgresql://user:***@host/db``); URLs without one are returned unchanged."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://[^/:@]*:)[^@]*@", r"\1***@", url, flags=re.IGNORECASE)


def storage_file(url: str) -> Path | None:
    """The file behind a storage URL: ``sqlite:///rel/file.db`` (relative; ``sqlite:////abs`` absolute) or
    ``journal:///abs/file.log`` (always absolute); None for in-memory SQLite and for server storages."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        return None if path in ("", ":memory:") else Path(path)
    if url.startswith("journal:///"):
        path = url.removeprefix("journal:///").lstrip("/")  # journal:////abs too, without a leading "//"
        return Path("/" + path) if path else None
    return None


SQLITE_MAX_IN_FLIGHT = 256  # trials a SQLite file holds running at once (benchmarks/RESULTS.md §12, the soak)


def in_flight_bound(url: str, asked: int = 0) -> int | None:
    """How many trials may run at once on the storage at ``url``: ``asked`` (``runtime.max_in_flight``) when set,
    else SQLite's measured bound (beyond it, heartbeats queue behind the writes and live trials look dead); None:
    no bound."""
    if asked:
        return asked
    return SQLITE_MAX_IN_FLIGHT if url.startswith("sqlite:") else None


def open_existing_storage(url: str) -> optuna.storages.BaseStorage:
    """``open_storage`` for commands that read a study (report, a worker without a spec; not the dashboard,
    which may be opened before the first run): a
    SQLite or journal file that does not exist is a KdsearchError instead of a new empty database."""
    path = storage_file(url)
    if path is not None and not path.is_file():
        raise KdsearchError(
            f"no study storage at {path}: run `kdsearch run` first, or point --storage at the study's "
            "database (--spec for a study file, from the folder it was run in)"
        )
    return open_storage(url)


@contextmanager
def storage_contents() -> Iterator[None]:
    """Reading studies from a storage whose file holds something else (a journal file with a garbage
    line, an SQLite database of another application) raises a KdsearchError, not Optuna's internals."""
    try:
        yield
    except (ValueError, optuna.exceptions.StorageInternalError) as err:  # json.JSONDecodeError is a ValueError
        raise KdsearchError(
            f"the storage holds data that is not an Optuna study database ({type(err).__name__}: {first_line(err)}); "
            "point --storage at kdsearch's own database or at a new file"
        ) from None


def open_storage(
    url: str, *, heartbeat_interval: int = 0, grace_period: int = 30, max_retry: int = 2
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: ``journal:///file``, ``grpc://host:port`` (``kdsearch storage-proxy``) or any
    RDB URL.

    SQLite gets WAL mode and a 60 s busy timeout (several worker processes on one file);
    ``postgresql://`` uses psycopg2, at most 6 connections per process (``SERVER_POOL``). With ``heartbeat_interval`` > 0 an RDB storage records a
    heartbeat per running trial; one silent for ``grace_period`` s is FAILED by the next worker
    that checks, and re-queued with the same params up to ``max_retry`` times. Optuna's journal
    storage has no heartbeats: there, workers detect dead processes on their own host instead
    (``workers.fail_dead_local_trials``).
    """
    if url.startswith("grpc://"):
        from .proxy import open_grpc

        return open_grpc(url)
    try:
        file = storage_file(url)
        if url.startswith("journal:///") and file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(str(file)))
        engine_kwargs: dict = {}
        sqlite_file = url.startswith("sqlite:///") and file is not None
        if sqlite_file:
            file.parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs = {"connect_args": {"timeout": 60}}
        rdb_url = url
        if url.startswith(("postgresql://", "postgres://")):
            # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; kdsearch ships psycopg2-binary
            rdb_url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        if not sqlite_file and "://" in url and not url.startswith("sqlite"):
            engine_kwargs = dict(SERVER_POOL)
        heartbeat = _heartbeat_kwargs(heartbeat_interval, grace_period, max_retry) if heartbeat_interval else {}
        return _new_rdb_storage(rdb_url, engine_kwargs, heartbeat, file if sqlite_file else None)
    except (ImportError, ModuleNotFoundError) as err:
        raise KdsearchError(
            f"storage {shown_url(url)!r} needs a driver that is not installed ({err}); install it with pip"
        ) from None
    except (SQLAlchemyError, OSError, ValueError, optuna.exceptions.StorageInternalError) as err:
        # bad URLs, unreachable servers, unwritable files; anything else is a bug and keeps its traceback
        raise KdsearchError(
            f"cannot open storage {shown_url(url)!r}: {first_line(err)}; check the URL (sqlite:///path.db, journal:///path.log, grpc://host:13000, "
            "postgresql://user:pass@host/db) and that the server is reachable"
        ) from None


def spec_storage(spec: StudySpec, url: str | None = None) -> optuna.storages.BaseStorage:
    """``open_storage`` with the spec's heartbeat settings (``runtime.heartbeat_interval`` etc.)."""
    r = spec.runtime
    return open_storage(
        url or spec.resolved_storage(),
        heartbeat_interval=r.heartbeat_interval,
        grace_period=r.grace_period,
        max_retry=r.max_retry,
    )


def _new_rdb_storage(
    url: str, engine_kwargs: dict, extra: dict, sqlite_path: Path | None
) -> optuna.storages.RDBStorage:
    """``RDBStorage``, safe when several workers open a fresh database at once.

    Creating the schema is not atomic: a SQLite file is opened under a file lock (and switched
    to WAL there); on a server, a process that loses the race retries a few times.
    """
    import random

    import sqlalchemy

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", FutureWarning)
                if sqlite_path is None:
                    cls = retrying_rdb() if not url.startswith("sqlite") else optuna.storages.RDBStorage
                    return cls(url, engine_kwargs=engine_kwargs, **extra)
                from filelock import FileLock

                with FileLock(f"{sqlite_path}.lock"):
                    _sqlite_wal(sqlite_path)
                    return SqliteStorage(url, engine_kwargs=engine_kwargs, **extra)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):  # e.g. "relation already exists"
            if sqlite_path is not None or attempt == 4:
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


RDB_CALLS = [  # the storage calls of Optuna's RDBStorage (and the private ones its cached wrapper makes)
    *("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name"),
    *("get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs"),
    *("get_all_studies", "create_new_trial", "_create_new_trial", "set_trial_param", "_set_trial_param"),
    *("get_trial_param", "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr"),
    *("set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials"),
    *("_get_trials", "get_best_trial", "_get_best_trial_id", "record_heartbeat", "_get_stale_trial_ids"),
]


@functools.cache
def retrying_rdb() -> type:
    """``RDBStorage`` whose calls ride out a database server's restart (``retrying.py``); not for SQLite, whose
    OperationalErrors are about the file (a lock held too long, another application's tables), not a server."""
    from .retrying import rdb_transient, retrying_class

    base = optuna.storages.RDBStorage
    return retrying_class(base, [n for n in RDB_CALLS if hasattr(base, n)], rdb_transient, lambda s: "database")


def _sqlite_wal(path: Path) -> None:
    """Switch the SQLite file to WAL (persistent in the file): readers no longer block the writer."""
    import sqlite3

    con = sqlite3.connect(str(path), timeout=60)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


_immediate = threading.local()  # set while this thread writes a trial's state: its transaction takes the write lock


class SqliteStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage on a SQLite file whose trial-state writes are atomic across processes.

    pysqlite runs a SELECT outside any transaction and begins one only at the first write, so Optuna's "is the
    trial still running? then end it" was two steps: a worker failing a trial it took for dead and the trial's
    own worker ending it could both succeed (the trial and its retry then both counted), and two workers could
    both take one waiting trial. Here that call runs in ``BEGIN IMMEDIATE`` (the write lock first, waiting up to
    the busy timeout), so the second writer reads the first's end and is refused. Its connections also get WAL
    and the busy timeout (``_sqlite_on_connect``)."""

    def __init__(self, *args, **kwargs) -> None:
        import sqlalchemy

        super().__init__(*args, **kwargs)
        sqlalchemy.event.listen(self.engine, "connect", _sqlite_on_connect)
        sqlalchemy.event.listen(self.engine, "begin", _sqlite_on_begin)

    def set_trial_state_values(self, trial_id, state, values=None) -> bool:
        _immediate.on = True
        try:
            return super().set_trial_state_values(trial_id, state, values)
        finally:
            _immediate.on = False


def _sqlite_on_begin(connection) -> None:
    if getattr(_immediate, "on", False):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def retry_callback(max_retry: int):
    """Optuna's retry of a dead trial (same params, attrs ``failed_trial``/``retry_history``), old or new name."""
    storages = optuna.storages
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
            return storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        return storages.RetryFailedTrialCallback(max_retry=max_retry)


def _heartbeat_kwargs(interval: int, grace: int, max_retry: int) -> dict:
    import inspect

    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
    return {"heartbeat_interval": interval, "grace_period": grace, key: retry_callback(max_retry)}


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    return isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None


_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(key: str) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault(key, threading.Lock())


class StorageLock:
    """A cross-process lock that lives with a storage: a lock file ``<file><suffix>`` beside a SQLite or journal
    file (one machine), a PostgreSQL advisory lock keyed by ``name`` (any number of machines), and for other
    storages (the gRPC proxy) a lock kept in the storage itself (``study_lock.StudyLock``). A killed holder
    releases it: the OS drops its file lock, the server its session, a study lock expires after its lease.
    ``where`` says which, for messages."""

    def __init__(self, url: str, storage: optuna.storages.BaseStorage | None, name: str, suffix: str) -> None:
        self.where = ""
        self._file = None
        self._engine = None
        self._conn = None
        self._study_lock = None
        self._local = _process_lock(f"{url}|{name}|{suffix}")  # one waiter per process holds a file or connection
        self._holding = False
        file = storage_file(url)
        if file is not None:
            from filelock import FileLock

            self.where = f"{file}{suffix}"  # beside the storage's file
            self._file = FileLock(self.where)
        if url.startswith(("postgresql", "postgres://")) and isinstance(storage, optuna.storages.RDBStorage):
            import hashlib

            self._engine = storage.engine
            self._key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1
            self.where = "a PostgreSQL advisory lock"
        elif file is None and storage is not None:
            from .study_lock import LOCK_PREFIX, StudyLock

            self._study_lock = StudyLock(storage, name)
            self.where = f"the lock study {LOCK_PREFIX}{name}:* in the storage"

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock, waiting up to ``timeout`` s (None: as long as it takes); whether it is held."""
        if self._study_lock is not None:
            return self._study_lock.acquire(timeout)
        if not self._local.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            held = self._acquire_shared(timeout)
        except BaseException:
            self._local.release()
            raise
        if held:
            self._holding = True
        else:
            self._local.release()
        return held

    def _acquire_shared(self, timeout: float | None) -> bool:
        """The file or advisory lock, once this process's lock is held."""
        if self._file is not None:
            from filelock import Timeout

            try:
                self._file.acquire(timeout=-1 if timeout is None else timeout)
            except Timeout:
                return False
            return True
        if self._engine is None:
            return True
        from .retrying import RETRY_S, call_retrying, rdb_transient

        # the server restarting: its sessions, and their locks, are gone anyway, so ask again once it is back
        deadline = None if timeout is None else time.monotonic() + timeout
        retry_s = RETRY_S if deadline is None else max(0.0, deadline - time.monotonic())
        return call_retrying(lambda: self._advisory(deadline), rdb_transient, lambda: "PostgreSQL", retry_s)

    def _advisory(self, deadline: float | None) -> bool:
        import sqlalchemy

        conn = self._engine.connect()
        try:
            if deadline is None:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
                got = True
            else:
                while True:
                    got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar()
                    if got or time.monotonic() >= deadline:
                        break
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return bool(got)

    def held(self) -> bool:
        """Whether the lock taken by ``acquire`` is still this process's: False when it was lost meanwhile (a
        PostgreSQL restart ends the session that held the advisory lock; a silent holder's study lock is taken
        over), so what was decided under it may have been decided by another process too."""
        if self._study_lock is not None:
            return self._study_lock.held()
        if self._engine is None:  # a file lock, or none: held from acquire to release
            return self._holding
        if self._conn is None:  # never taken, released, or found lost below
            return False
        import sqlalchemy

        try:
            mine = self._conn.execute(
                sqlalchemy.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
                    " AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = :k"
                ),
                {"k": self._key},
            ).scalar()
            self._conn.commit()
        except sqlalchemy.exc.SQLAlchemyError:  # the session is gone, and its lock with it: nothing to unlock
            try:
                self._conn.close()
            except sqlalchemy.exc.SQLAlchemyError:
                pass
            self._conn = None
            return False
        return bool(mine)

    def release(self) -> None:
        if self._study_lock is not None:
            self._study_lock.release()
            return
        if not self._holding:
            return
        try:
            self._release_shared()
        finally:
            self._holding = False
            self._local.release()

    def _release_shared(self) -> None:
        if self._file is not None:
            if self._file.is_locked:
                self._file.release()
        elif self._conn is not None:
            import sqlalchemy

            from .retrying import rdb_transient

            try:
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._conn.commit()
            except Exception as err:  # the server restarted while the lock was held: it ended with the session
                if not rdb_transient(err):
                    raise
            finally:
                self._conn.close()
                self._conn = None
