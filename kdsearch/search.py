"""The Optuna study: storage, sampler, pruner, the per-trial objective and the final comparison.

Everything a trial needs to be reproduced is in its params (``method``, ``<method>_<param>``)
and user attrs (``seed``); the spec is stored on the study, so storage alone rebuilds a report.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import optuna
import torch
from torch import nn

from .data import Split, Splits
from .errors import KdsearchError
from .methods import METHODS, build_method
from .metrics import cost_row
from .models import build_model, default_feature_layer, load_checkpoint
from .spec import StudySpec, spec_from_dict
from .teacher import Teacher, feature_cache_mb, teacher_features
from .train import Augment, EpochResult, LiveTeacher, TrainSet, evaluate, fit, steps_per_epoch

SPEC_ATTR = "spec"
FINAL_ATTR = "final_comparison"
TEACHER_ATTR = "teacher"


def open_storage(
    url: str, *, heartbeat_interval: int = 0, grace_period: int = 30, max_retry: int = 2
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: ``journal:///file`` or any RDB URL.

    SQLite gets WAL mode and a 60 s busy timeout (several worker processes on one file);
    ``postgresql://`` uses psycopg2. With ``heartbeat_interval`` > 0 an RDB storage records a
    heartbeat per running trial; one silent for ``grace_period`` s is FAILED by the next worker
    that checks, and re-queued with the same params up to ``max_retry`` times. Optuna's journal
    storage has no heartbeats: there, workers detect dead processes on their own host instead
    (``fail_dead_local_trials``).
    """
    try:
        if url.startswith("journal:///"):
            path = Path(url.removeprefix("journal://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs: dict = {}
        sqlite_file = url.startswith("sqlite:///") and url.removeprefix("sqlite:///") not in ("", ":memory:")
        if sqlite_file:
            path = Path(url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs = {"connect_args": {"timeout": 60}}
        rdb_url = url
        if url.startswith(("postgresql://", "postgres://")):
            # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; kdsearch ships psycopg2-binary
            rdb_url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        heartbeat = _heartbeat_kwargs(heartbeat_interval, grace_period, max_retry) if heartbeat_interval else {}
        storage = _new_rdb_storage(rdb_url, engine_kwargs, heartbeat, path if sqlite_file else None)
        if sqlite_file:
            import sqlalchemy

            sqlalchemy.event.listen(storage.engine, "connect", _sqlite_on_connect)
        return storage
    except (ImportError, ModuleNotFoundError) as err:
        raise KdsearchError(f"storage {url!r} needs a driver that is not installed ({err}); install it with pip") from None
    except Exception as err:  # sqlalchemy raises many types for bad URLs and unreachable servers
        reason = str(err).splitlines()[0]
        raise KdsearchError(
            f"cannot open storage {url!r}: {reason}; check the URL (sqlite:///path.db, journal:///path.log, "
            "postgresql://user:pass@host/db) and that the server is reachable"
        ) from None


def spec_storage(spec: StudySpec, url: str | None = None) -> optuna.storages.BaseStorage:
    """``open_storage`` with the spec's heartbeat settings (``runtime.heartbeat_interval`` etc.)."""
    r = spec.runtime
    return open_storage(
        url or spec.resolved_storage(), heartbeat_interval=r.heartbeat_interval, grace_period=r.grace_period,
        max_retry=r.max_retry,
    )  # fmt: skip


def _new_rdb_storage(url: str, engine_kwargs: dict, extra: dict, sqlite_path: Path | None) -> optuna.storages.RDBStorage:
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
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **extra)
                from filelock import FileLock

                with FileLock(f"{sqlite_path}.lock"):
                    _sqlite_wal(sqlite_path)
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **extra)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):  # e.g. "relation already exists"
            if sqlite_path is not None or attempt == 4:
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


def _sqlite_wal(path: Path) -> None:
    """Switch the SQLite file to WAL (persistent in the file): readers no longer block the writer."""
    import sqlite3

    con = sqlite3.connect(str(path), timeout=60)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def _retry_callback(max_retry: int):
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
    return {"heartbeat_interval": interval, "grace_period": grace, key: _retry_callback(max_retry)}


def make_sampler(spec: StudySpec, rank: int = 0) -> optuna.samplers.BaseSampler:
    """TPE over the conditional space: ``multivariate`` models params jointly, ``group`` per method."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=spec.search.sampler_seed + rank, multivariate=True, group=True)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    s = spec.search
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_epochs)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.student.epochs)
    return optuna.pruners.NopPruner()


def create_study(spec: StudySpec, storage: optuna.storages.BaseStorage | str, rank: int = 0) -> optuna.Study:
    """Create the spec's study, or load it when it exists (a rerun adds trials to it)."""
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction="maximize",
        sampler=make_sampler(spec, rank),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
    return study


def load_study(name: str | None, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Load a study by name (or the only one in the storage), with a clear error when absent."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name is None:
        if len(names) != 1:
            listing = ", ".join(names) or "none"
            raise KdsearchError(f"the storage holds {len(names)} studies ({listing}); pick one with --study NAME")
        name = names[0]
    if name not in names:
        raise KdsearchError(f"no study {name!r} in this storage; it holds: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def study_spec(study: optuna.Study) -> StudySpec:
    """The spec the study was created with."""
    if SPEC_ATTR not in study.user_attrs:
        raise KdsearchError(f"study {study.study_name!r} was not created by kdsearch (it has no stored spec)")
    return spec_from_dict(study.user_attrs[SPEC_ATTR], source=f"study {study.study_name!r}")


# --- workers: several processes (or machines) on one study --------------------------------------

FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
WORKER_ATTR = "worker"  # user attr: host, pid, process start time and rank of the process that ran the trial


def join_study(name: str, storage: optuna.storages.BaseStorage, spec: StudySpec, rank: int = 0) -> optuna.Study:
    """Load an existing study with this worker's sampler (seed ``search.sampler_seed + rank``) and pruner."""
    return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(spec, rank), pruner=make_pruner(spec))


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    return isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


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
        self._file = None
        self._engine = None
        self._conn = None
        for prefix in ("sqlite:///", "journal:///"):
            if url.startswith(prefix) and url.removeprefix(prefix) not in ("", ":memory:"):
                from filelock import FileLock

                path = url.removeprefix("journal://") if prefix == "journal:///" else url.removeprefix(prefix)
                self._file = FileLock(f"{path}.trials.lock")
        if url.startswith(("postgresql", "postgres://")) and isinstance(storage, optuna.storages.RDBStorage):
            import hashlib

            self._engine = storage.engine
            self._key = int.from_bytes(hashlib.sha256(f"kdsearch:{study_name}".encode()).digest()[:8], "big") >> 1

    def acquire(self) -> None:
        if self._held:
            return
        if self._file is not None:
            self._file.acquire()
        elif self._engine is not None:
            import sqlalchemy

            self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            self._conn.commit()
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._file is not None:
            self._file.release()
        elif self._conn is not None:
            import sqlalchemy

            try:
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None

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
    import os
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()), "rank": rank}


def _process_gone(info: dict) -> bool:
    """True only when ``info`` names a process on this host that no longer runs."""
    import os
    import socket

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


def fail_dead_local_trials(study: optuna.Study, max_retry: int) -> list[int]:
    """For storages without heartbeats (journal): FAIL the running trials whose worker process on
    this host is gone, and queue each again with the same params (up to ``max_retry`` times).

    Trials of workers on other hosts cannot be checked this way; use an RDB storage with heartbeats there.
    """
    storage = study._storage
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        info = t.user_attrs.get(WORKER_ATTR)
        if not isinstance(info, dict) or not _process_gone(info):
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            _retry_callback(max_retry)(study, storage.get_trial(t._trial_id))
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
    stop_requested: Callable[[], bool] | None = None,
) -> int:
    """Run trials in this process until the study holds ``total`` finished (COMPLETE + PRUNED) trials.

    Before each trial, under ``slot``: fail dead workers' trials (heartbeat check, or dead local
    processes when the storage has no heartbeats), then start a trial only when a retry is
    waiting or finished + running < ``total``; otherwise wait for the running ones, since one may
    still die and come back as a retry. ``MaxTrialsCallback`` also stops after the last one.
    ``stop_requested`` is checked between trials: a Ctrl-C whose KeyboardInterrupt Python swallowed
    (raised inside a finalizer) still stops the worker, after its trial. Returns how many trials ran.
    """
    stop = optuna.study.MaxTrialsCallback(total, states=FINISHED_STATES)
    me = worker_identity(rank)

    def objective_(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, me)
        slot.release()  # the trial exists and counts as RUNNING: the next worker may decide
        return objective(trial)

    state = optuna.trial.TrialState
    ran = 0
    while True:
        if stop_requested is not None and stop_requested():
            raise KeyboardInterrupt
        with slot:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if heartbeat:
                    optuna.storages.fail_stale_trials(study)
                else:
                    fail_dead_local_trials(study, max_retry)
            counts: dict = {}
            for t in study.get_trials(deepcopy=False):
                counts[t.state] = counts.get(t.state, 0) + 1
            finished = counts.get(state.COMPLETE, 0) + counts.get(state.PRUNED, 0)
            if finished >= total:
                return ran
            if counts.get(state.WAITING, 0) or finished + counts.get(state.RUNNING, 0) < total:
                study.optimize(objective_, n_trials=1, callbacks=[stop, *callbacks])
                ran += 1
                continue
        if on_wait is not None:
            on_wait(counts.get(state.RUNNING, 0))
        time.sleep(poll_s)


@dataclass
class StudyData:
    """Device-resident tensors shared by every trial of one process."""

    spec: StudySpec
    splits: Splits
    device: torch.device
    teacher: Teacher
    distill_set: TrainSet  # labeled + unlabeled rows, with cached teacher logits (and features when they fit)
    labeled_set: TrainSet  # labeled rows only (scratch baseline)
    val: Split
    steps: int  # optimizer steps per epoch, the same for distilled and scratch students
    teacher_layer: str
    student_layer: str
    features: str  # how feature methods get teacher features: "cached (N MB)", "live (...)" or "not needed"


def prepare_study_data(spec: StudySpec, splits: Splits, teacher: Teacher, device: torch.device) -> StudyData:
    """Gather the student's pool and the teacher's cached outputs once, on ``device``.

    Teacher features (for cosine/hint) are cached when a study uses such a method in ``cached``
    mode and they fit ``teacher.feature_cache_mb``; otherwise those trials run the teacher live.
    """
    pool = torch.cat([splits.labeled, splits.unlabeled])
    labeled = torch.zeros(len(pool), dtype=torch.bool)
    labeled[: len(splits.labeled)] = True
    teacher_layer = spec.teacher.feature_layer or default_feature_layer(spec.teacher.arch)
    student_layer = spec.student.feature_layer or default_feature_layer(spec.student.arch)
    x_pool = splits.train.x[pool].to(device)
    features, how = None, "not needed"
    if "cached" in spec.search.teacher_modes and any(METHODS.get(m).needs_features for m in spec.search.methods):
        probe = teacher_features(teacher.model, teacher_layer, x_pool[:1])
        mb = feature_cache_mb(len(pool), tuple(probe.shape[1:]))
        if mb <= spec.teacher.feature_cache_mb:
            features, how = teacher_features(teacher.model, teacher_layer, x_pool), f"cached in memory ({mb:.0f} MB)"
        else:
            how = f"teacher runs live ({mb:.0f} MB of features > teacher.feature_cache_mb = {spec.teacher.feature_cache_mb:g})"
    distill = TrainSet(x_pool, splits.train.y[pool], labeled, teacher.train_logits[pool], features).to(device)
    labeled_only = TrainSet(
        splits.train.x[splits.labeled], splits.train.y[splits.labeled], torch.ones(len(splits.labeled), dtype=torch.bool)
    ).to(device)
    steps = steps_per_epoch(len(pool), spec.student.batch_size)
    return StudyData(spec, splits, device, teacher, distill, labeled_only, splits.val.to(device), steps,
                     teacher_layer, student_layer, how)  # fmt: skip


def trial_params(trial: optuna.trial.BaseTrial, spec: StudySpec) -> tuple[str, dict[str, float]]:
    """Sample a method, then only that method's parameters (named ``<method>_<param>``)."""
    method = trial.suggest_categorical("method", spec.search.methods)
    params = {
        name: trial.suggest_float(f"{method}_{name}", r.low, r.high, log=r.log)
        for name, r in spec.method_space(method).items()
    }
    return method, params


def trial_teacher_mode(trial: optuna.trial.BaseTrial, spec: StudySpec) -> str:
    """The teacher-output mode: searched (param ``teacher_mode``) when the spec lists both."""
    modes = spec.search.teacher_modes
    return modes[0] if len(modes) == 1 else trial.suggest_categorical("teacher_mode", modes)


def params_of(frozen: optuna.trial.FrozenTrial) -> tuple[str, dict[str, float]]:
    """(method, params) of a finished trial, as ``trial_params`` sampled them."""
    method = frozen.params["method"]
    prefix = f"{method}_"
    return method, {k.removeprefix(prefix): v for k, v in frozen.params.items() if k.startswith(prefix)}


def teacher_mode_of(frozen: optuna.trial.FrozenTrial) -> str:
    """The teacher-output mode a finished trial ran with."""
    return frozen.params.get("teacher_mode", frozen.user_attrs.get("teacher_mode", "cached"))


def train_student(
    data: StudyData,
    method: str,
    params: Mapping[str, float],
    seed: int,
    on_epoch: Callable[[EpochResult], None] | None = None,
    *,
    teacher_mode: str = "cached",
) -> tuple[nn.Module, list[EpochResult]]:
    """A fresh student (init, batch order, augmentation from ``seed``) trained with ``method``.

    Teacher-free ``scratch`` trains on the labeled rows only, with as many steps as a distilled
    student. In ``consistent`` mode the student sees augmented batches and the teacher runs live
    on the same batch (scratch gets the same augmentation, so the comparison stays fair).
    """
    spec, splits = data.spec, data.splits
    torch.manual_seed(seed)
    model = build_model(spec.student.arch, splits.num_classes, splits.in_channels, splits.image_size)
    if spec.student.checkpoint is not None:
        load_checkpoint(model, Path(spec.student.checkpoint), role="student", arch=spec.student.arch,
                        ignore=tuple(spec.student.checkpoint_ignore))  # fmt: skip
    model = model.to(data.device)
    impl = build_method(method)
    consistent = teacher_mode == "consistent"
    augment = Augment(spec.student.augment_shift, spec.student.augment_flip) if consistent else None
    live = None
    if impl.needs_teacher and (consistent or (impl.needs_features and data.distill_set.teacher_features is None)):
        live = LiveTeacher(data.teacher.model, data.teacher_layer if impl.needs_features else None)
    history = fit(
        model,
        impl,
        params,
        data.distill_set if impl.needs_teacher else data.labeled_set,
        data.val,
        epochs=spec.student.epochs,
        batch_size=spec.student.batch_size,
        lr=spec.student.lr,
        seed=seed,
        steps=data.steps,
        live_teacher=live,
        augment=augment,
        student_layer=data.student_layer,
        on_epoch=on_epoch,
    )
    return model, history


def make_objective(data: StudyData) -> Callable[[optuna.Trial], float]:
    """The trial function: sample, distill, report the objective each epoch (pruning), store attrs."""
    spec = data.spec
    objective = spec.search.objective

    def run(trial: optuna.Trial) -> float:
        method, params = trial_params(trial, spec)
        mode = trial_teacher_mode(trial, spec)
        seed = trial.user_attrs.get("seed", spec.search.trial_seed + trial.number)  # a retry keeps its seed
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("teacher_mode", mode)
        start = time.perf_counter()

        def on_epoch(r: EpochResult) -> None:
            trial.set_user_attr("epochs_run", r.epoch)
            trial.set_user_attr("accuracy", r.accuracy)
            trial.set_user_attr("auc", r.auc)
            trial.set_user_attr("wall_time_s", time.perf_counter() - start)
            trial.report(getattr(r, objective), r.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {r.epoch}")

        _, history = train_student(data, method, params, seed, on_epoch, teacher_mode=mode)
        return getattr(history[-1], objective)

    return run


def best_trials_per_method(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """The best completed trial of each method (by the objective)."""
    best: dict[str, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        m = t.params["method"]
        if m not in best or t.value > best[m].value:
            best[m] = t
    return best


def cost_table(data: StudyData, teacher: Teacher, student: nn.Module) -> dict[str, dict[str, float]]:
    """Cost of the teacher and of the student architecture (scratch and distilled students share it)."""
    sample = data.val.x[:1]
    return {
        f"teacher ({data.spec.teacher.arch})": cost_row(teacher.model, sample),
        f"student ({data.spec.student.arch})": cost_row(student, sample),
    }


def final_comparison(
    data: StudyData,
    study: optuna.Study,
    teacher: Teacher,
    *,
    on_run: Callable[[str, int], None] | None = None,
) -> dict:
    """Retrain the best trial of each method and a scratch student with K seeds; score on **test**.

    This is the only place that touches the test split. The result is stored on the study
    (user attr ``final_comparison``) and returned.
    """
    best = best_trials_per_method(study)
    if not best:
        raise KdsearchError(f"study {study.study_name!r} has no completed trial yet; run some trials first")
    f = data.spec.final
    seeds = list(range(f.first_seed, f.first_seed + f.seeds))
    test = data.splits.test.to(data.device)
    candidates = [(f"best {m}", m, params_of(t)[1], t.number, teacher_mode_of(t)) for m, t in sorted(best.items())]
    candidates.append(("scratch", "scratch", {}, None, "cached"))
    if any(c[4] == "consistent" for c in candidates):
        candidates.append(("scratch (augmented)", "scratch", {}, None, "consistent"))
    students = []
    for label, method, params, number, mode in candidates:
        runs = []
        for seed in seeds:
            model, _ = train_student(data, method, params, seed, teacher_mode=mode)
            acc, roc = evaluate(model, test)
            runs.append({"seed": seed, "accuracy": acc, "auc": roc})
            if on_run is not None:
                on_run(label, seed)
        students.append(
            {"label": label, "method": method, "params": params, "trial": number, "teacher_mode": mode, "runs": runs}
        )
    result = {
        "split": "test",
        "objective": data.spec.search.objective,
        "seeds": seeds,
        "students": students,
        "teacher": {"accuracy": teacher.metrics["test_accuracy"], "auc": teacher.metrics["test_auc"]},
        "cost": cost_table(data, teacher, model),
        "n_complete_trials": len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
    }
    study.set_user_attr(FINAL_ATTR, result)
    return result

