"""One teacher per study, on every machine: the first worker publishes it, the others download and verify it,
and a worker whose teacher differs refuses to run trials."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

import kdsearch.distill.teacher
import kdsearch.parallel.teacher_share
from kdsearch.config.load import spec_from_dict
from kdsearch.errors import KdsearchError
from kdsearch.nets.models import state_dict_sha256
from kdsearch.parallel.teacher_share import BuildLock, open_artifact_store, share_teacher, store_location
from kdsearch.prepare import prepare
from kdsearch.progress import Console
from kdsearch.search.storage import open_storage
from kdsearch.search.study import RECORD_ATTR, TEACHER_ATTR, create_study


def _spec(root: Path, tmp: Path, cache: str, *, shared: bool = True, **teacher):
    """A tiny study on the 4-class IDX data, its teacher cache in ``tmp/<cache>``, artifacts in ``tmp/artifacts``."""
    return spec_from_dict(
        {
            "name": "tiny",
            "output_dir": str(tmp / "run"),
            "data": {"root": str(root), "val_size": 80, "labeled": 40, "unlabeled": 100},
            "teacher": {"epochs": 1, **teacher},
            "student": {"epochs": 1},
            "runtime": {
                "cache_dir": str(tmp / cache),
                "artifact_store": str(tmp / "artifacts") if shared else None,
                "threads": 1,
            },
        }
    )


class Machine:
    """One worker process's view: its spec (own cache folder), the shared study, what it printed and trained."""

    def __init__(self, spec, url: str, monkeypatch) -> None:
        self.spec, self.url, self.lines, self.trained = spec, url, [], 0
        self.storage = open_storage(url)
        self.study = create_study(spec, self.storage)
        self._monkeypatch = monkeypatch

    def prepare(self):
        real = kdsearch.distill.teacher.train_teacher

        def counting(*args, **kwargs):
            self.trained += 1
            return real(*args, **kwargs)

        with self._monkeypatch.context() as m:
            m.setattr(kdsearch.distill.teacher, "train_teacher", counting)
            console = Console(echo=lambda text, err=False: self.lines.append(text), bars=False)
            teacher = prepare(self.spec, console, study=self.study, url=self.url, storage=self.storage).teacher
        return teacher

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def journal(tmp_path) -> str:
    return f"journal:///{tmp_path / 'run' / 'journal.log'}"


def test_two_workers_with_separate_caches_use_one_teacher_only_the_first_trains(
    idx_dataset, tmp_path, journal, monkeypatch
):
    first = Machine(_spec(idx_dataset, tmp_path, "cache-a"), journal, monkeypatch)
    second = Machine(_spec(idx_dataset, tmp_path, "cache-b"), journal, monkeypatch)

    a = first.prepare()
    assert first.trained == 1 and "trained and cached" in first.output
    assert f"teacher: shared with the study's other workers in {tmp_path / 'artifacts'}" in first.output
    hashed: list[str] = []  # the download hashes the file once and the weights once
    for module in (kdsearch.distill.teacher, kdsearch.parallel.teacher_share):
        for name in ("state_dict_sha256", "file_sha256"):
            if hasattr(module, name):
                real = getattr(module, name)
                monkeypatch.setattr(
                    module, name, lambda *a, _real=real, _name=name, **k: hashed.append(_name) or _real(*a, **k)
                )
    b = second.prepare()
    monkeypatch.undo()
    assert sorted(hashed) == ["file_sha256", "state_dict_sha256"], hashed
    assert second.trained == 0, second.output  # downloaded, not trained
    assert "loaded from cache (no retraining)" in second.output
    assert "downloaded the teacher of study 'tiny'" in second.output and "verified" in second.output
    assert b.path.is_relative_to(tmp_path / "cache-b") and b.path.is_file()

    assert a.digest == b.digest == state_dict_sha256(b.model.state_dict())
    assert torch.allclose(a.train_logits, b.train_logits, atol=1e-5)  # recomputed from the downloaded weights
    study = optuna.load_study(study_name="tiny", storage=open_storage(journal))
    record = study.user_attrs[RECORD_ATTR]
    assert record["sha256"] == a.digest and record["by"]["pid"] == os.getpid()
    assert study.user_attrs[TEACHER_ATTR] == a.metrics == b.metrics  # written once, by the builder

    again = Machine(_spec(idx_dataset, tmp_path, "cache-b"), journal, monkeypatch).prepare()  # a re-run here
    assert again.from_cache and again.digest == a.digest


def test_a_damaged_teacher_artifact_is_one_line_naming_the_fix(idx_dataset, tmp_path, journal, monkeypatch):
    Machine(_spec(idx_dataset, tmp_path, "cache-a"), journal, monkeypatch).prepare()
    second = Machine(_spec(idx_dataset, tmp_path, "cache-b"), journal, monkeypatch)
    artifact = tmp_path / "artifacts" / second.study.user_attrs[RECORD_ATTR]["artifact_id"]
    artifact.write_bytes(artifact.read_bytes()[:-10] + b"0123456789")

    with pytest.raises(KdsearchError, match="does not match the sha256 recorded for it") as err:
        second.prepare()
    assert "\n" not in str(err.value) and "restore it from a backup" in str(err.value)
    assert second.trained == 0 and not list((tmp_path / "cache-b" / "teachers").glob("*.pt"))


def test_a_missing_teacher_artifact_names_the_store(idx_dataset, tmp_path, journal, monkeypatch):
    Machine(_spec(idx_dataset, tmp_path, "cache-a"), journal, monkeypatch).prepare()
    second = Machine(_spec(idx_dataset, tmp_path, "cache-b"), journal, monkeypatch)
    (tmp_path / "artifacts" / second.study.user_attrs[RECORD_ATTR]["artifact_id"]).unlink()
    with pytest.raises(
        KdsearchError, match="cannot download the teacher of study 'tiny' .* set runtime.artifact_store"
    ):
        second.prepare()


def test_a_worker_with_another_teacher_checkpoint_refuses(idx_dataset, tmp_path, journal, monkeypatch):
    """The same spec on another machine, but its teacher.checkpoint file holds other weights."""
    from kdsearch.nets.models import build_model

    ckpt = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save(build_model("bn_cnn", 4, 1, 28).state_dict(), ckpt)
    first = Machine(_spec(idx_dataset, tmp_path, "cache-a", checkpoint=str(ckpt)), journal, monkeypatch)
    first.prepare()
    first.study.enqueue_trial({})  # the study has trials under way: its teacher may no longer change

    torch.manual_seed(1)
    torch.save(build_model("bn_cnn", 4, 1, 28).state_dict(), ckpt)
    other = Machine(_spec(idx_dataset, tmp_path, "cache-b", checkpoint=str(ckpt)), journal, monkeypatch)
    with pytest.raises(KdsearchError, match="this process's teacher is not the teacher of study 'tiny'") as err:
        other.prepare()
    assert "\n" not in str(err.value) and "--study NEW_NAME" in str(err.value)


def test_a_cached_teacher_with_other_weights_refuses_and_says_delete_it(idx_dataset, tmp_path, journal, monkeypatch):
    first = Machine(_spec(idx_dataset, tmp_path, "cache-a"), journal, monkeypatch)
    a = first.prepare()
    # machine B trained the same settings itself earlier, to other weights (e.g. another GPU's arithmetic)
    entry = torch.load(a.path, weights_only=True)
    entry["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in entry["state_dict"].items()}
    theirs = tmp_path / "cache-b" / "teachers" / a.path.name
    theirs.parent.mkdir(parents=True)
    torch.save(entry, theirs)

    with pytest.raises(KdsearchError, match=f"this machine's teacher {re.escape(str(theirs))} .* delete") as err:
        Machine(_spec(idx_dataset, tmp_path, "cache-b"), journal, monkeypatch).prepare()
    assert "\n" not in str(err.value)


def test_without_a_store_only_the_digest_is_shared_and_checked(idx_dataset, tmp_path, monkeypatch):
    """PostgreSQL without runtime.artifact_store: nothing is uploaded; a machine whose teacher differs refuses."""
    spec = _spec(idx_dataset, tmp_path, "cache-a", shared=False)
    study = optuna.create_study(study_name="tiny")
    url = "postgresql://db-host/kdsearch"  # only its kind matters here: no store, no lock without an RDBStorage
    assert store_location(spec, url) is None
    lines: list[str] = []

    def use(spec):
        from kdsearch.data import load_splits
        from kdsearch.distill.teacher import prepare_teacher

        splits = load_splits(spec.data)
        cpu = torch.device("cpu")
        return share_teacher(
            spec,
            splits,
            cpu,
            study,
            url=url,
            storage=None,
            build=lambda: prepare_teacher(spec, splits, cpu),
            echo=lines.append,
        )

    a = use(spec)
    record = study.user_attrs[RECORD_ATTR]
    assert record["sha256"] == a.digest and record["artifact_id"] is None and not (tmp_path / "artifacts").exists()

    b_spec = _spec(idx_dataset, tmp_path, "cache-b", shared=False)
    assert use(b_spec).digest == a.digest  # trained again there (deterministic on CPU): the same teacher

    entry = torch.load(a.path, weights_only=True)
    entry["state_dict"] = {k: v * 2 if v.is_floating_point() else v for k, v in entry["state_dict"].items()}
    torch.save(entry, tmp_path / "cache-b" / "teachers" / a.path.name)
    with pytest.raises(KdsearchError, match=f"copy {re.escape(str(a.path))} from .* to {re.escape(str(tmp_path))}"):
        use(b_spec)


def test_where_the_teacher_is_shared(tmp_path):
    spec = spec_from_dict({"name": "s", "output_dir": str(tmp_path / "out")})
    assert store_location(spec, f"sqlite:///{tmp_path}/study.db") == str(tmp_path / "out" / "artifacts")
    assert store_location(spec, f"journal:///{tmp_path}/journal.log") == str(tmp_path / "out" / "artifacts")
    assert store_location(spec, "postgresql://u:p@host/db") is None
    s3 = spec_from_dict({"runtime": {"artifact_store": "s3://bucket/kd/teachers"}})
    assert store_location(s3, "postgresql://u:p@host/db") == "s3://bucket/kd/teachers"
    try:
        import boto3  # noqa: F401
    except ImportError:
        with pytest.raises(KdsearchError, match="needs boto3, which is not installed: pip install boto3"):
            open_artifact_store("s3://bucket/kd")
    with pytest.raises(KdsearchError, match="names no bucket"):
        open_artifact_store("s3:///kd")


def test_a_second_process_waits_for_the_builder_with_a_message_and_a_bound(tmp_path):
    url = f"journal:///{tmp_path / 'journal.log'}"
    builder, waiter = BuildLock(url, None, "tiny"), BuildLock(url, None, "tiny")
    lines: list[str] = []
    assert builder.try_acquire(0.1)
    start = time.monotonic()
    with pytest.raises(
        KdsearchError, match="gave up after 1 s waiting for the process that builds the teacher of study 'tiny'"
    ):
        with waiter.held("tiny", lines.append, wait_s=1.0, poll_s=0.2):
            pass
    assert 1.0 <= time.monotonic() - start < 10
    assert lines == [
        f"teacher: another process is building the teacher of study 'tiny'; waiting for it (up to 1 s, lock: "
        f"{tmp_path / 'journal.log'}.teacher.lock)"
    ]
    builder.release()
    with waiter.held("tiny", lines.append, wait_s=1.0, poll_s=0.2):
        assert len(lines) == 1


TOML = """\
name = "tiny"
output_dir = "{out}"
[data]
root = "{root}"
val_size = 80
labeled = 40
unlabeled = 100
[teacher]
epochs = 2
[student]
epochs = 1
[search]
trials = 2
methods = ["kd"]
[final]
seeds = 1
[runtime]
threads = 1
artifact_store = "{artifacts}"
"""


@pytest.mark.slow
def test_two_worker_processes_started_at_once_train_one_teacher(idx_dataset, tmp_path):
    """Two `kdsearch worker` processes, each with its own $KDSEARCH_CACHE (two machines), on one journal study."""
    spec = tmp_path / "tiny.toml"
    spec.write_text(TOML.format(out=tmp_path / "run", root=idx_dataset, artifacts=tmp_path / "shared"))
    storage = f"journal:///{tmp_path / 'run' / 'journal.log'}"
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "KDSEARCH_CACHE": str(tmp_path / f"cache-{rank}")}
        log = open(tmp_path / f"worker-{rank}.log", "w")
        cmd = [sys.executable, "-m", "kdsearch.cli", "worker", "--spec", str(spec), "--storage", storage]
        procs.append(
            subprocess.Popen(
                [*cmd, "--trials", "2", "--rank", str(rank)], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        )
        log.close()
    try:
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [(tmp_path / f"worker-{rank}.log").read_text() for rank in range(2)]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sum("trained and cached" in log for log in logs) == 1, logs
    assert sum("downloaded the teacher of study 'tiny'" in log for log in logs) == 1, logs
    assert not any("Traceback" in log for log in logs), logs

    study = optuna.load_study(study_name="tiny", storage=open_storage(storage))
    record = study.user_attrs[RECORD_ATTR]
    assert {t.user_attrs["teacher_sha256"] for t in study.trials} == {record["sha256"]}  # every trial, one teacher
    assert {t.user_attrs["torch_version"] for t in study.trials} == {torch.__version__}
    digests = set()
    for rank in range(2):
        (cached,) = (tmp_path / f"cache-{rank}" / "teachers").glob("*.pt")
        model = kdsearch.distill.teacher.build_model("bn_cnn", 4, 1, 28)
        model.load_state_dict(torch.load(cached, weights_only=True)["state_dict"])
        digests.add(state_dict_sha256(model.state_dict()))
    assert digests == {record["sha256"]}


def test_the_build_lock_of_a_journal_storage_lies_beside_its_file(tmp_path, monkeypatch):
    """journal:///abs/file.log names /abs/file.log for the storage and for its locks alike, from any folder."""
    from kdsearch.search.storage import StorageLock, storage_file

    monkeypatch.chdir(tmp_path)
    url = f"journal://{tmp_path / 'journal.log'}"  # three slashes: an absolute path
    assert url.startswith("journal:///") and storage_file(url) == tmp_path / "journal.log"
    assert StorageLock(url, None, "x", ".teacher.lock").where == f"{tmp_path / 'journal.log'}.teacher.lock"
    assert (
        storage_file("sqlite:///runs/study.db") == Path("runs/study.db") and storage_file("sqlite:///:memory:") is None
    )
    assert storage_file("postgresql://u@h/db") is None
