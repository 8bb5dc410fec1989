"""A storage password stays secret: it is on no worker's command line (``ps`` shows those to every user), in no
line kdsearch prints and in no spec a study stores; ``$KDSEARCH_STORAGE`` gives the URL without the command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdsearch import cli
from kdsearch.cli import app
from kdsearch.config.load import spec_from_dict
from kdsearch.parallel import local_workers as workers
from kdsearch.runner import resume_command
from kdsearch.search.storage import STORAGE_ENV, shown_url
from kdsearch.search.study import SPEC_ATTR, create_study

SECRET = "s3cr3t-pw"
URL = f"postgresql://kd:{SECRET}@127.0.0.1:1/kdsearch"  # port 1: refused at once, nothing listens there


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (URL, "postgresql://kd:***@127.0.0.1:1/kdsearch"),
        ("postgresql+psycopg2://u:p%40ss@db.example/kd", "postgresql+psycopg2://u:***@db.example/kd"),
        ("postgresql://kd@127.0.0.1/kd", "postgresql://kd@127.0.0.1/kd"),  # no password: unchanged
        ("sqlite:///runs/a:b@c/study.db", "sqlite:///runs/a:b@c/study.db"),  # a path, not a password
        ("journal:///abs/x.log", "journal:///abs/x.log"),
    ],
)
def test_a_url_is_shown_with_its_password_masked(url, shown):
    assert shown_url(url) == shown


def test_local_workers_get_the_url_from_the_environment_not_the_command_line(tmp_path, monkeypatch):
    started: list[tuple[list[str], dict[str, str]]] = []

    class Recorder:
        def __init__(self, cmd, *, env, **_):
            started.append((cmd, env))

    monkeypatch.setattr(subprocess, "Popen", Recorder)
    spec = spec_from_dict({"name": "tiny"})
    plan = [({"CUDA_VISIBLE_DEVICES": "0"}, "cpu", 1), ({"CUDA_VISIBLE_DEVICES": "1"}, "cpu", 1)]
    workers.start_workers(spec, tmp_path / "s.toml", URL, plan, total=4, logs=tmp_path / "logs")
    assert len(started) == 2
    for cmd, env in started:
        assert not any(SECRET in arg for arg in cmd), cmd
        assert "--storage" not in cmd
        assert env[STORAGE_ENV] == URL  # the worker's --storage default
    assert cli.STORAGE_ENV == STORAGE_ENV  # the CLI names the same variable without importing storage


def test_the_resume_line_and_the_stored_spec_mask_the_password(tmp_path):
    line = resume_command(Path("my.toml"), URL, study=None, output_dir=None, data_root=None, overrides=None)
    assert SECRET not in line and "kd:***@127.0.0.1" in line
    spec = spec_from_dict({"name": "tiny", "storage": URL})
    db = f"sqlite:///{tmp_path / 'study.db'}"
    study = create_study(spec, db)
    assert study.user_attrs[SPEC_ATTR]["storage"] == "postgresql://kd:***@127.0.0.1:1/kdsearch"
    create_study(spec, db)  # resuming with the real URL: the storage is not a setting that is compared


@pytest.mark.parametrize("how", ["option", "environment"])
def test_an_unreachable_storage_is_one_line_without_the_password(tmp_path, how):
    args = ["run", "--output-dir", str(tmp_path / "run"), "--trials", "1"]
    env = {STORAGE_ENV: URL} if how == "environment" else {}
    if how == "option":
        args += ["--storage", URL]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert "cannot open storage 'postgresql://kd:***@127.0.0.1:1/kdsearch'" in result.output
    assert SECRET not in result.output
