"""A study written by an older kdsearch still reports and resumes.

``fixtures/study_before_move`` was made by kdsearch at c5c7539, before the modules moved into subpackages
(its README.md says how). Only the public surface is used here: the ``kdsearch`` command, run as a process,
and plain optuna / sqlite3 on the copied database.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import optuna
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "study_before_move"
NAME = "before_move"
STORED_TRIALS = 3


def kdsearch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``kdsearch ARGS`` in ``cwd``, importing the kdsearch that this test imports."""
    spec = importlib.util.find_spec("kdsearch")
    assert spec is not None and spec.submodule_search_locations, "kdsearch is not importable"
    source_root = str(Path(next(iter(spec.submodule_search_locations))).parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "kdsearch.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def output_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture
def copied(tmp_path) -> Path:
    """A copy of the fixture (opening the checked-in db would write beside it; the study's paths are relative)."""
    copy = tmp_path / "study_before_move"
    shutil.copytree(FIXTURE, copy)
    return copy


@pytest.fixture
def study_dir(copied, fashion_root) -> Path:
    """The copy, for kdsearch to run from (it reads the study's images from Fashion-MNIST)."""
    return copied


def storage_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'run' / 'study.db'}"


def user_attrs(folder: Path) -> dict:
    """The study's user attributes, read with sqlite3 alone (no optuna, no kdsearch)."""
    with closing(sqlite3.connect(folder / "run" / "study.db")) as db:
        rows = db.execute(
            "SELECT a.key, a.value_json FROM study_user_attributes a JOIN studies s ON s.study_id = a.study_id "
            "WHERE s.study_name = ?",
            (NAME,),
        ).fetchall()
    return {key: json.loads(value) for key, value in rows}


def test_fixture_is_a_complete_study(copied):
    """What the other tests rely on: finished trials, a final comparison and the teacher's artifact file."""
    assert not (FIXTURE / "run" / "study.db-wal").exists(), "the db must be checkpointed (no -wal file)"
    study = optuna.load_study(study_name=NAME, storage=storage_url(copied))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * STORED_TRIALS
    assert {t.params["method"] for t in study.trials} == {"kd", "dkd"}
    final = study.user_attrs["final_comparison"]
    assert final["n_complete_trials"] == STORED_TRIALS and final["run"] == 1
    assert {s["label"] for s in final["students"]} == {"best kd", "best dkd", "pseudo-label", "scratch"}
    record = study.user_attrs["teacher_artifact"]
    assert (FIXTURE / "run" / "artifacts" / record["artifact_id"]).is_file()


@pytest.mark.slow
def test_report_of_a_stored_study_shows_its_final_comparison(study_dir):
    before = user_attrs(study_dir)
    final = before["final_comparison"]

    proc = kdsearch("report", "--study", NAME, "--storage", storage_url(study_dir), cwd=study_dir)
    out = output_of(proc)
    assert proc.returncode == 0, out

    report = study_dir / "run" / "report.html"
    assert report.is_file(), out
    html = report.read_text(encoding="utf-8")
    assert f"kdsearch report: {NAME}" in html
    assert f"{STORED_TRIALS} complete" in out and f"{STORED_TRIALS} complete" in html
    n = len(final["seeds"])
    for student in final["students"]:
        mean = statistics.mean(run["accuracy"] for run in student["runs"])
        shown = f"{student['label']} (test, {n} seeds)"
        for where, text in (("terminal", out), ("report.html", html)):
            assert shown in text, f"{shown!r} missing from the {where}:\n{out}"
            assert f"accuracy {mean:.4f}" in text, f"{student['label']}'s mean {mean:.4f} missing from the {where}"
    teacher = final["teacher"]
    assert f"accuracy {teacher['accuracy']:.4f}, AUC {teacher['auc']:.4f}" in out

    # read, not recomputed: nothing was trained, the stored comparison and trials are as they were
    assert user_attrs(study_dir)["final_comparison"] == final, "the report ran the final comparison again"
    assert not (study_dir / "run" / "students").exists(), "the report exported (so retrained) students"
    assert not (study_dir / "cache").exists(), "the report loaded data or a teacher"
    study = optuna.load_study(study_name=NAME, storage=storage_url(study_dir))
    assert len(study.trials) == STORED_TRIALS


@pytest.mark.slow
def test_a_stored_study_resumes_with_its_teacher(study_dir):
    before = optuna.load_study(study_name=NAME, storage=storage_url(study_dir))
    old = [(t.number, t.state, t.params, t.value) for t in before.trials]
    record = before.user_attrs["teacher_artifact"]

    proc = kdsearch("run", "--spec", "study.toml", "--trials", "2", cwd=study_dir)
    out = output_of(proc)
    assert proc.returncode == 0, out  # a refused teacher or changed settings exit with code 2
    assert f"resuming, {STORED_TRIALS} trials already" in out, out
    assert "no retraining" in out, f"the study's teacher was not reused:\n{out}"
    assert "trained and cached" not in out, f"a teacher was trained:\n{out}"

    after = optuna.load_study(study_name=NAME, storage=storage_url(study_dir))
    trials = after.trials
    assert [(t.number, t.state, t.params, t.value) for t in trials[:STORED_TRIALS]] == old
    new = trials[STORED_TRIALS:]
    assert len(new) == 2, [t.state for t in trials]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in new), [t.state for t in new]
    assert all(t.params["method"] in ("kd", "dkd") for t in new)

    # the study keeps its one teacher, and the new final comparison is labelled a re-run that saw every trial
    kept = after.user_attrs["teacher_artifact"]
    for field in ("sha256", "key", "artifact_id"):
        assert kept[field] == record[field], f"the teacher record's {field} changed: {record[field]} → {kept[field]}"
    final = after.user_attrs["final_comparison"]
    assert final["run"] == 2 and final["n_complete_trials"] == STORED_TRIALS + 2
    assert (study_dir / "run" / "report.html").is_file()


def test_a_field_newer_than_a_study_is_no_change_while_it_keeps_its_default():
    """A study stored before a field existed (teacher.pretrained, data.split_names) resumes when the field is at
    its default, and is refused when it is not: the default is what that study ran with."""
    from kdsearch.config.spec import StudySpec
    from kdsearch.search.study import spec_changes, stored_spec

    defaults = stored_spec(StudySpec())
    old = stored_spec(StudySpec())
    del old["teacher"]["pretrained"], old["data"]["split_names"]
    assert spec_changes(old, stored_spec(StudySpec()), defaults) == []
    changed = stored_spec(StudySpec(teacher={"arch": "timm/resnet10t", "pretrained": True}))
    found = spec_changes(old, changed, defaults)
    assert "teacher.pretrained: None → True" in found and "teacher.arch: 'bn_cnn' → 'timm/resnet10t'" in found
    assert spec_changes(old, stored_spec(StudySpec()))  # without the defaults every new field counts
