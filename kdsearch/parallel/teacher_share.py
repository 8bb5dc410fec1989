"""One teacher for the whole study, on every machine: publish, fetch and verify the study's teacher.

The first process that builds the teacher of a study (under a cross-process lock, ``BuildLock``)
uploads its weights as a study artifact (Optuna's artifact API) and records on the study, once, the
user attr ``teacher_artifact``: the artifact id, the sha256 of the weights (``Teacher.digest``), the
teacher key, its validation metrics and who built it. Every other process uses that teacher: from its
local cache when the digest matches, else downloaded, verified and cached (its training-split logits
recomputed here). A process whose teacher differs from the recorded one refuses to run trials.

Where the artifacts live: ``runtime.artifact_store`` (a folder, or ``s3://bucket/prefix``); unset,
``<output_dir>/artifacts`` for SQLite and journal storages, and nothing for other storages
(PostgreSQL): there each machine builds its own teacher, and only the digest is shared.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import optuna
import torch
from filelock import FileLock
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

from ..config.spec import StudySpec
from ..data import Splits
from ..distill.teacher import Teacher, build_teacher_model, cache_teacher, teacher_cache_path, teacher_key
from ..errors import KdsearchError, first_line
from ..nets.identity import file_sha256
from ..nets.models import state_dict_sha256
from ..search.results import Builder, TeacherRecord, TeacherScores
from ..search.storage import ARTIFACT_DIR, StorageLock, storage_file
from ..search.study import settings_may_change

WAIT_S = 24 * 3600.0  # how long a process waits for another one building the study's teacher


class PrefixedStore:
    """An Optuna artifact store whose artifact ids are kept under ``prefix/`` in ``inner``."""

    def __init__(self, inner: Any, prefix: str) -> None:
        self._inner = inner
        self._prefix = prefix.strip("/")

    def _key(self, artifact_id: str) -> str:
        return f"{self._prefix}/{artifact_id}" if self._prefix else artifact_id

    def open_reader(self, artifact_id: str) -> IO[bytes]:
        return self._inner.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: IO[bytes]) -> None:
        self._inner.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self._inner.remove(self._key(artifact_id))


def store_location(spec: StudySpec, url: str) -> str | None:
    """Where this study's teacher is uploaded: ``runtime.artifact_store``, else ``<output_dir>/artifacts`` for a
    SQLite or journal file, else None (no upload)."""
    if spec.runtime.artifact_store:
        return _normalized(spec.runtime.artifact_store)
    if storage_file(url) is not None:
        return str((spec.resolved_output_dir() / ARTIFACT_DIR).resolve())
    return None


def _normalized(location: str) -> str:
    return location if location.startswith("s3://") else str(Path(location).expanduser().resolve())


def open_artifact_store(location: str) -> Any:
    """The Optuna artifact store at ``location``: ``s3://bucket/prefix`` (boto3; endpoint and credentials from the
    usual ``AWS_*`` environment variables) or a folder (created when missing)."""
    if location.startswith("s3://"):
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        if not bucket:
            raise KdsearchError(f"runtime.artifact_store {location!r} names no bucket; write s3://bucket/prefix")
        try:
            import boto3
        except ImportError:
            raise KdsearchError(
                f"runtime.artifact_store {location!r} needs boto3, which is not installed: pip install boto3 "
                "(or set runtime.artifact_store to a shared folder)"
            ) from None
        from optuna.artifacts import Boto3ArtifactStore

        return PrefixedStore(Boto3ArtifactStore(bucket, boto3.client("s3")), prefix)
    path = Path(location)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KdsearchError(
            f"cannot create the artifact folder {path} ({err.strerror or err}); set runtime.artifact_store to a "
            "writable folder"
        ) from None
    return FileSystemArtifactStore(str(path))


class BuildLock:
    """A cross-process lock held while one process builds and publishes the study's teacher.

    SQLite and journal files: a lock file beside the storage (``<file>.teacher.lock``); PostgreSQL: an
    advisory lock on the server; other storages: none. A killed holder releases it (the OS drops
    its file lock, the server its session).
    """

    def __init__(self, url: str, storage: optuna.storages.BaseStorage | None, study_name: str) -> None:
        self._lock = StorageLock(url, storage, f"kdsearch-teacher:{study_name}", ".teacher.lock")
        self.where = self._lock.where

    def try_acquire(self, timeout: float) -> bool:
        """Take the lock, waiting up to ``timeout`` s; whether it is held."""
        return self._lock.acquire(timeout)

    def release(self) -> None:
        self._lock.release()

    @contextmanager
    def held(self, study_name: str, echo: Callable[..., None], wait_s: float, poll_s: float) -> Iterator[None]:
        """Hold the lock; while another process holds it, say so once and wait, up to ``wait_s`` s."""
        deadline = time.monotonic() + wait_s
        said = False
        while not self.try_acquire(poll_s):
            if time.monotonic() >= deadline:
                raise KdsearchError(
                    f"gave up after {_duration(wait_s)} waiting for the process that builds the teacher of study "
                    f"{study_name!r} (it holds {self.where}); if it is stuck, stop it, then start this process again"
                )
            if not said:
                echo(
                    f"teacher: another process is building the teacher of study {study_name!r}; waiting for it "
                    f"(up to {_duration(wait_s)}, lock: {self.where})"
                )
                said = True
        try:
            yield
        finally:
            self.release()


def _duration(seconds: float) -> str:
    """``seconds`` for people: '90 s', '5 min', '24 h'."""
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 60:.3g} min" if seconds >= 120 else f"{seconds:.0f} s"


def share_teacher(
    spec: StudySpec,
    splits: Splits,
    device: torch.device,
    study: optuna.Study,
    *,
    url: str | None,
    storage: optuna.storages.BaseStorage | None,
    build: Callable[[], Teacher],
    echo: Callable[..., None],
    wait_s: float = WAIT_S,
    poll_s: float = 2.0,
    key: str | None = None,
) -> Teacher:
    """The study's one teacher: the recorded one (cached here, else downloaded and verified), or for the first
    process ``build()``'s, published (uploaded when there is a store, recorded on the study once).

    Args:
        build: loads this machine's cached teacher for ``spec`` or trains it (``teacher.prepare_teacher``).
        url, storage: the study's storage URL and storage (for the build lock and the default store);
            ``url=None`` only reads the record (``report``, ``export``): a study without one gets ``build()``'s.
        wait_s, poll_s: how long to wait for another process building the teacher, and how often to look (s).
        key: the teacher's ``teacher_key``, when the caller has computed it.

    Raises a KdsearchError when this process's teacher (settings, data, checkpoint or weights) is not the
    recorded one, or the downloaded artifact does not match its recorded sha256.
    """
    key = key or teacher_key(spec, splits)
    record = _current_record(study, key)
    if record is None and url is not None:
        lock = BuildLock(url, storage, study.study_name)
        location = store_location(spec, url)
        if location is None:  # nothing to download from: every machine builds its teacher, the first records it
            teacher = build()
            with lock.held(study.study_name, echo, wait_s, poll_s):
                record = _current_record(study, key)
                if record is None:
                    _publish(study, teacher, key, None, echo)
                    return teacher
            _check_same(study, teacher, record)
            return teacher
        with lock.held(study.study_name, echo, wait_s, poll_s):
            record = _current_record(study, key)
            if record is None:
                teacher = build()
                _publish(study, teacher, key, location, echo)
                return teacher
    if record is None:
        return build()
    path = teacher_cache_path(spec, splits, key)
    if record.artifact_id and not path.is_file():
        location = _normalized(spec.runtime.artifact_store) if spec.runtime.artifact_store else record.store
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):  # local workers sharing one cache download it once
            if not path.is_file():
                teacher = _download(study, record, location, spec, splits, device, path)
                echo(
                    f"teacher: downloaded the teacher of study {study.study_name!r} from {location} (built on "
                    f"{record.by.host}), sha256 {record.sha256[:12]} verified, cached at {path}"
                )
                return teacher  # its weights are the recorded ones: checked, hashed once
    teacher = build()
    _check_same(study, teacher, record)
    return teacher


def _current_record(study: optuna.Study, key: str) -> TeacherRecord | None:
    """The study's teacher record for teacher ``key``; None when there is none, or when the recorded teacher has
    another key but the study took new settings (no finished, running or queued trial yet)."""
    record = TeacherRecord.read(study)
    if record is None or record.key == key:
        return record
    if settings_may_change(study):
        return None
    raise KdsearchError(
        f"this process's teacher is not the teacher of study {study.study_name!r}: its settings, data files, "
        f"checkpoint or model code give teacher key {key}, the study's teacher (built on {record.by.host}) has "
        f"key {record.key}; run with the study's spec, data and teacher files, or start a new study with "
        "--study NEW_NAME"
    )


def _publish(study: optuna.Study, teacher: Teacher, key: str, location: str | None, echo: Callable[..., None]) -> None:
    """Upload ``teacher``'s weights to ``location`` (when given) and record it on the study (``TeacherRecord``)."""
    artifact_id, file_digest = None, None
    if location is not None:
        store = open_artifact_store(location)
        with tempfile.TemporaryDirectory(dir=teacher.path.parent, prefix=".upload-") as tmp:
            file = Path(tmp) / f"teacher-{key}.pt"
            torch.save({"state_dict": {k: v.cpu() for k, v in teacher.model.state_dict().items()}}, file)
            file_digest = file_sha256(file)
            try:
                artifact_id = upload_artifact(
                    artifact_store=store, file_path=str(file), study_or_trial=study, mimetype="application/octet-stream"
                )
            except Exception as err:  # OSError, botocore's errors
                raise KdsearchError(
                    f"cannot upload the study's teacher to {location}: {first_line(err)}; "
                    f"{_store_fix(err, 'set runtime.artifact_store to a writable folder or s3://bucket/prefix')}"
                ) from None
        echo(f"teacher: shared with the study's other workers in {location} (sha256 {teacher.digest[:12]})")
    TeacherRecord(
        artifact_id=artifact_id,
        sha256=teacher.digest,
        file_sha256=file_digest,
        key=key,
        metrics=TeacherScores.model_validate(teacher.metrics),
        store=location,
        path=str(teacher.path),
        by=Builder(host=socket.gethostname(), pid=os.getpid()),
        at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    ).save(study)


def _download(
    study: optuna.Study,
    record: TeacherRecord,
    location: str | None,
    spec: StudySpec,
    splits: Splits,
    device: torch.device,
    path: Path,
) -> Teacher:
    """Download the recorded teacher from ``location``, check its sha256 and write it into this machine's cache;
    the cached teacher (the file and the weights are each hashed once)."""
    artifact = record.artifact_id
    if not location:
        raise KdsearchError(
            f"the teacher of study {study.study_name!r} is artifact {artifact}, but no artifact store is known here; "
            "set runtime.artifact_store to the folder or s3://bucket/prefix it was uploaded to"
        )
    store = open_artifact_store(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        file = Path(tmp) / "teacher.pt"
        try:
            download_artifact(artifact_store=store, file_path=str(file), artifact_id=artifact)
        except Exception as err:  # ArtifactNotFound, OSError, botocore's errors
            fix = f"set runtime.artifact_store to the folder or s3://bucket/prefix it was uploaded to ({record.store})"
            raise KdsearchError(
                f"cannot download the teacher of study {study.study_name!r} (artifact {artifact}) from {location}: "
                f"{first_line(err)}; {_store_fix(err, fix)}"
            ) from None
        got = file_sha256(file)
        model, digest = None, None
        if got == record.file_sha256:
            try:
                model = build_teacher_model(spec, splits)
                model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True)["state_dict"])
                digest = state_dict_sha256(model.state_dict())
            except Exception:  # unpickling errors, missing or misshapen weights: a mismatch below
                pass
        if model is None or digest != record.sha256:
            want = str(record.file_sha256)[:12]
            raise KdsearchError(
                f"the teacher artifact {artifact} of study {study.study_name!r} in {location} does not match the "
                f"sha256 recorded for it (file {got[:12]}, expected {want}): it is damaged or was replaced; restore "
                "it from a backup of that store, or start a new study with --study NEW_NAME"
            )
    return cache_teacher(model, record.metrics.to_attr(), splits, device, path, digest=digest, from_cache=True)


def _store_fix(err: BaseException, otherwise: str) -> str:
    """What to do about an artifact store's error: S3 credentials, bucket or endpoint when it is botocore's."""
    name = type(err).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError") or "InvalidAccessKeyId" in str(err):
        return (
            "give this machine S3 credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials; "
            "AWS_ENDPOINT_URL for an S3-compatible server)"
        )
    if "NoSuchBucket" in str(err):
        return "create the bucket, or set runtime.artifact_store to an existing s3://bucket/prefix"
    if name in ("EndpointConnectionError", "ConnectTimeoutError"):
        return "check AWS_ENDPOINT_URL and that the S3 server is reachable"
    return otherwise


def _check_same(study: optuna.Study, teacher: Teacher, record: TeacherRecord) -> None:
    """KdsearchError when this machine's teacher is not the recorded one (other weights under the same key)."""
    if teacher.digest == record.sha256:
        return
    if record.artifact_id:
        fix = f"delete {teacher.path} so that the study's teacher is downloaded"
    else:
        fix = (
            f"copy {record.path} from {record.by.host} to {teacher.path}, or use "
            "runtime.artifact_store (a folder or s3://bucket/prefix every machine reaches) in a new study"
        )
    raise KdsearchError(
        f"this machine's teacher {teacher.path} (sha256 {teacher.digest[:12]}) is not the teacher of study "
        f"{study.study_name!r} (sha256 {record.sha256[:12]}, built on {record.by.host}): {fix}; or start a "
        "new study with --study NEW_NAME"
    )
