"""Parallel workers with real processes and real databases: SQLite (WAL), the journal file,
a private PostgreSQL server, a worker killed with SIGKILL mid-trial, and the dashboard."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from helpers import started
from local_servers import pg_bindir, private_postgres
from optuna.trial import TrialState
from typer.testing import CliRunner

from kdsearch.cli import app
from kdsearch.config.load import load_spec
from kdsearch.parallel.workers import WORKER_ATTR
from kdsearch.search.storage import open_storage
from kdsearch.search.study import FINAL_ATTR, create_study

KDSEARCH = [sys.executable, "-m", "kdsearch.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
# appended to the tiny spec's [runtime] section: one thread per process, quick heartbeats; the grace
# period leaves room for a stall of a live worker on a loaded 2-core box (stale = FAILED under it)
FAST = "threads = 1\nheartbeat_interval = 1\ngrace_period = 15\n"
# the killed-worker test waits out the grace period once, so it uses a shorter one
FAST_RETRY = "threads = 1\nheartbeat_interval = 1\ngrace_period = 6\n"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def start_worker(
    tmp_path: Path, spec: Path | None, storage: str, *, trials: int, rank: int
) -> tuple[subprocess.Popen, Path]:
    """``kdsearch worker`` as a real process; stdout and stderr go to files (nobody reads pipes while we wait).

    Without ``spec`` it joins the study by name, as a worker on another machine would.
    """
    err = tmp_path / f"worker-{rank}.err"
    how = ["--spec", str(spec)] if spec is not None else ["--study", "tiny"]
    with open(err, "w") as err_file, open(tmp_path / f"worker-{rank}.out", "w") as out_file:
        proc = subprocess.Popen(
            [*KDSEARCH, "worker", *how, "--storage", storage, "--trials", str(trials), "--rank", str(rank)],
            stdout=out_file,
            stderr=err_file,
            env=ENV,
        )
    return proc, err


def wait_all(procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def check_study(storage: str, total: int, name: str = "tiny") -> optuna.Study:
    """Exactly ``total`` finished trials, unique numbers and params, nothing left running or waiting."""
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    trials = study.trials
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == total, [(t.number, t.state.name) for t in trials]
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    params = [tuple(sorted(t.params.items())) for t in finished if "failed_trial" not in t.system_attrs]
    assert len(set(params)) == len(params), "two workers sampled the same params: are their sampler seeds distinct?"
    return study


def assert_clean(*logs: Path) -> None:
    for log in logs:
        text = log.read_text()
        assert "database is locked" not in text, f"{log}:\n{text}"
        assert "Traceback" not in text, f"{log}:\n{text}"


@pytest.mark.slow
def test_run_with_4_workers_on_sqlite(write_spec, tmp_path):
    """`run --workers 4`: 4 processes on one SQLite file (WAL), 12 trials exactly, report made once by the parent."""
    spec = write_spec(epochs=1, extra=FAST)
    proc = subprocess.run(
        [*KDSEARCH, "run", "--spec", str(spec), "--workers", "4", "--trials", "12"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started 4 workers (cpu, cpu, cpu, cpu; 1 thread each)" in proc.stdout
    db = tmp_path / "run" / "study.db"
    study = check_study(f"sqlite:///{db}", 12)
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ranks = {t.user_attrs[WORKER_ATTR]["rank"] for t in study.trials}
    assert len(ranks) >= 2, f"one worker ran every trial: {ranks}"
    assert FINAL_ATTR in study.user_attrs and (tmp_path / "run" / "report.html").is_file()
    assert proc.stdout.count("report: ") == 1
    logs = sorted((tmp_path / "run" / "workers").glob("worker-*.log"))
    assert len(logs) == 4
    assert_clean(*logs)
    for log in logs:  # the parent trained the teacher before starting them
        assert "loaded from cache (no retraining)" in log.read_text()


@pytest.mark.slow
def test_4_workers_on_journal_storage(write_spec, tmp_path):
    """Four bare `kdsearch worker` processes racing to create and fill a study in a journal file."""
    spec = write_spec(epochs=1, extra=FAST)
    storage = f"journal:///{tmp_path / 'run' / 'journal.log'}"
    started = [start_worker(tmp_path, spec, storage, trials=12, rank=r) for r in range(4)]
    wait_all([p for p, _ in started], timeout=240)
    assert [p.returncode for p, _ in started] == [0] * 4, [e.read_text()[-2000:] for _, e in started]
    check_study(storage, 12)
    assert_clean(*(e for _, e in started))
    outs = [(tmp_path / f"worker-{r}.out").read_text() for r in range(4)]
    assert all("kdsearch report --storage journal:///" in o for o in outs)  # bare workers leave the report to the user
    assert FINAL_ATTR not in optuna.load_study(study_name="tiny", storage=open_storage(storage)).user_attrs
    report = CliRunner().invoke(app, ["report", "--storage", storage, "--study", "tiny"])
    assert report.exit_code == 0, report.output
    assert "no readable final comparison stored: running it now" in report.output
    assert FINAL_ATTR in optuna.load_study(study_name="tiny", storage=open_storage(storage)).user_attrs


def wait_for_finished(storage: str, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until study "tiny" in ``storage`` holds ``n`` finished trials (or ``proc`` exits, or time runs out)."""
    deadline, store = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            store = store or open_storage(storage)
            if len(optuna.load_study(study_name="tiny", storage=store).get_trials(states=FINISHED)) >= n:
                return
        except Exception:  # study not created yet, or the file read mid-write
            continue


@pytest.mark.slow
def test_ctrl_c_reaches_every_worker_of_run(write_spec, tmp_path):
    """Ctrl-C on `run --workers 2` is forwarded once to each worker: both stop, their running trials
    are FAILED (none left RUNNING), finished trials are kept, and the command says how to resume."""
    spec = write_spec(epochs=4, extra=FAST)
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    err = tmp_path / "run.err"
    with started([*KDSEARCH, "run", "--spec", str(spec), "--workers", "2", "--trials", "500"], err) as proc:
        wait_for_finished(storage, 4, proc)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    assert proc.returncode == 130, err.read_text()[-2000:]
    assert "resume with: kdsearch run" in err.read_text() and "Traceback" not in err.read_text()
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=open_storage(storage)).trials]
    assert TrialState.RUNNING not in states and states.count(TrialState.COMPLETE) >= 4
    for log in (tmp_path / "run" / "workers").glob("worker-*.log"):
        assert "interrupted" in log.read_text().strip().splitlines()[-1], log.read_text()[-1000:]


@pytest.mark.slow
def test_when_every_worker_fails_run_says_so_and_why(write_spec, tmp_path):
    """Each worker stops on a setting every trial would fail on; the parent shows their error lines and
    ends with one line of its own (exit 2) instead of a final comparison over nothing."""
    spec = write_spec(epochs=1, extra=FAST)
    proc = subprocess.run(
        [
            *KDSEARCH,
            "run",
            "--spec",
            str(spec),
            "--workers",
            "2",
            "--trials",
            "4",
            "--set",
            'search.methods=["hint"]',
            "--set",
            'student.feature_layer="classifier"',
            "--set",
            'teacher.feature_layer="classifier"',
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=240,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("method 'hint' cannot pair") == 2  # each worker's last log line, shown by the parent
    assert "error: every worker failed before a trial completed" in proc.stderr
    assert "Traceback" not in proc.stderr


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait for a reaper that never comes in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_workers_stop_when_run_is_killed_with_sigkill(write_spec, tmp_path):
    """kill -9 on `run --workers 2` (no chance to forward anything): the workers notice their parent
    died, stop as on Ctrl-C, and leave no trial RUNNING instead of running on as orphans."""
    spec = write_spec(epochs=4, extra=FAST)
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    proc = subprocess.Popen(
        [*KDSEARCH, "run", "--spec", str(spec), "--workers", "2", "--trials", "500"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    workers: list[int] = []
    try:
        wait_for_finished(storage, 2, proc)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 60
        while time.time() < deadline and any(_running(w) for w in workers):
            time.sleep(0.3)
        assert not any(_running(w) for w in workers), "the workers outlived their killed parent"
    finally:
        wait_all([proc], timeout=1)
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=open_storage(storage)).trials]
    assert TrialState.RUNNING not in states and states.count(TrialState.COMPLETE) >= 2
    for log in (tmp_path / "run" / "workers").glob("worker-*.log"):
        assert "interrupted" in log.read_text().strip().splitlines()[-1], log.read_text()[-1000:]


# --- PostgreSQL: a private server in a temp dir --------------------------------------------------


@pytest.fixture
def postgres_server():
    """A throw-away PostgreSQL server (benchmarks/local_servers.py: initdb, its own port and socket dir), stopped
    afterwards; missing server tools fail the test in CI and as root, and skip it elsewhere."""
    if pg_bindir() is None:
        hint = "PostgreSQL server binaries (initdb, pg_ctl) not found; `scripts/setup.sh --test` installs Debian's postgresql"
        if os.geteuid() == 0 or os.environ.get("CI"):
            pytest.fail(hint)
        pytest.skip(hint + " (needs root, so skipped here)")
    with private_postgres(max_connections=40) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of ``postgres_server``."""
    return postgres_server.url


@pytest.mark.slow
def test_the_advisory_lock_knows_it_was_lost_when_the_server_restarted(postgres_server):
    """The trial slot on PostgreSQL is a session's advisory lock; a restart ends the session and frees the lock
    for another worker, so the holder must be able to tell (then it counts again: ``_give_up_if_surplus``)."""
    from kdsearch.search.storage import StorageLock

    storage = open_storage(postgres_server.url)
    mine = StorageLock(postgres_server.url, storage, "kdsearch:s", ".trials.lock")
    theirs = StorageLock(postgres_server.url, open_storage(postgres_server.url), "kdsearch:s", ".trials.lock")
    assert mine.acquire() and mine.held()
    assert not theirs._acquire_shared(timeout=0.2)  # held: another session cannot take it
    postgres_server.restart()
    assert not mine.held()  # its session, and the lock, ended with the server
    assert theirs._acquire_shared(timeout=30)  # free for another worker now
    theirs._release_shared()
    mine.release()  # releasing a lost lock says nothing
    assert mine.acquire(timeout=30) and mine.held()
    mine.release()
    assert not mine.held()


@pytest.mark.slow
def test_2_workers_on_a_private_postgresql_server(write_spec, tmp_path, postgres_url):
    """Two workers at once: one with the spec, one joining the study by name and storage only
    (as on another machine; the study exists, e.g. made by `kdsearch run` or a first worker)."""
    spec = write_spec(epochs=3, extra=FAST)  # 8 trials of ~1 s: more work than the two start-ups differ by
    create_study(load_spec(spec), open_storage(postgres_url))
    started = [
        start_worker(tmp_path, spec, postgres_url, trials=8, rank=0),
        start_worker(tmp_path, None, postgres_url, trials=8, rank=1),
    ]
    wait_all([p for p, _ in started], timeout=180)
    assert [p.returncode for p, _ in started] == [0, 0], [e.read_text()[-2000:] for _, e in started]
    study = check_study(postgres_url, 8)
    assert {t.user_attrs[WORKER_ATTR]["rank"] for t in study.trials} == {0, 1}
    for rank in (0, 1):
        out = (tmp_path / f"worker-{rank}.out").read_text()
        assert f"worker {rank}: study 'tiny' in {postgres_url}" in out and f"worker {rank}: done" in out, out
    assert_clean(*(e for _, e in started))


# --- a worker killed mid-trial --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_killed_worker_trial_is_failed_and_retried(write_spec, tmp_path, kind):
    """SIGKILL one of two workers mid-trial: its trial turns FAILED (SQLite: its heartbeat goes stale;
    journal: its pid is gone) and the survivor re-runs it with the same params and seed; the study
    still reaches its count and no finished trial is lost."""
    spec = write_spec(epochs=4, extra=FAST_RETRY)
    path = tmp_path / "run" / ("study.db" if kind == "sqlite" else "journal.log")
    storage = f"sqlite:///{path}" if kind == "sqlite" else f"journal:///{path}"
    victim, _ = start_worker(tmp_path, spec, storage, trials=5, rank=0)
    survivor, survivor_err = None, None
    killed, store = None, None
    deadline = time.time() + 120
    try:
        while killed is None and time.time() < deadline and victim.poll() is None:
            time.sleep(0.2)
            try:
                store = store or open_storage(storage)
                trials = optuna.load_study(study_name="tiny", storage=store).trials
            except Exception:  # storage or study not created yet (KeyError), or the file half-made
                continue
            mine = [
                t.number
                for t in trials
                if t.state == TrialState.RUNNING
                and "seed" in t.user_attrs
                and t.user_attrs.get(WORKER_ATTR, {}).get("pid") == victim.pid
            ]
            if not mine:
                continue
            victim.send_signal(signal.SIGSTOP)  # frozen: the trial cannot finish between our look and the kill
            trials = optuna.load_study(study_name="tiny", storage=store).trials
            if trials[mine[0]].state == TrialState.RUNNING:
                finished_before = {u.number for u in trials if u.state in FINISHED}
                victim.send_signal(signal.SIGKILL)
                killed = mine[0]
            else:
                victim.send_signal(signal.SIGCONT)
        assert killed is not None, "the victim never ran a trial"
        victim.wait(timeout=10)
        # started after the kill, so the victim surely had a trial; the survivor finds it dead and retries it
        survivor, survivor_err = start_worker(tmp_path, spec, storage, trials=5, rank=1)
        wait_all([survivor], timeout=150)
    finally:
        wait_all([p for p in (victim, survivor) if p is not None], timeout=1)
    assert survivor.returncode == 0, survivor_err.read_text()[-3000:]
    study = check_study(storage, 5)
    by_number = {t.number: t for t in study.trials}
    dead = by_number[killed]
    assert dead.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1, [(t.number, t.system_attrs) for t in study.trials]
    retry = retries[0]
    assert retry.state in FINISHED and retry.system_attrs.get("retry_history") == [killed]
    assert retry.params == dead.params and retry.user_attrs["seed"] == dead.user_attrs["seed"]
    assert retry.user_attrs[WORKER_ATTR]["rank"] == 1
    assert all(by_number[n].state in FINISHED for n in finished_before), "a finished trial was lost"
    assert_clean(survivor_err)


# --- the dashboard ---------------------------------------------------------------------------------


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_dashboard_serves_the_study_with_report_artifacts(write_spec, tmp_path):
    spec = write_spec(epochs=1, extra=FAST)
    result = CliRunner().invoke(app, ["run", "--spec", str(spec), "--trials", "2"])
    assert result.exit_code == 0, result.output
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    out = tmp_path / "dashboard.out"
    with open(out, "w") as out_file:  # port 0: the server binds any free port and prints it
        proc = subprocess.Popen(
            [*KDSEARCH, "dashboard", "--storage", storage, "--port", "0"],
            stdout=out_file,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    try:
        deadline = time.time() + 90
        while "dashboard: http://" not in out.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        text = out.read_text()
        found = re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/dashboard", text)
        assert found, text
        port = int(found.group(1))
        assert "artifact report.html: uploaded" in text and "artifact final_comparison.json: uploaded" in text

        base = f"http://127.0.0.1:{port}"
        studies = get_json(f"{base}/api/studies")["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == "tiny"]
        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
        assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete"]
        assert detail["objective_names"] == ["val_accuracy"]  # the dashboard names the objective (not "Objective 0")
        artifacts = {a["filename"]: a for a in detail["artifacts"]}
        teachers = {name for name in artifacts if name.startswith("teacher-")}  # the study's shared teacher
        assert len(teachers) == 1 and set(artifacts) - teachers == {"report.html", "final_comparison.json"}

        def artifact_url(name: str) -> str:
            return f"{base}/artifacts/{summary['study_id']}/{artifacts[name]['artifact_id']}"

        with urllib.request.urlopen(artifact_url("report.html"), timeout=30) as r:
            assert b"plotly" in r.read()[:3_000_000]
        with urllib.request.urlopen(artifact_url("final_comparison.json"), timeout=30) as r:
            assert json.loads(r.read())["split"] == "test"
        with urllib.request.urlopen(f"{base}/dashboard", timeout=30) as page:  # the single-page app itself
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            wait_all([proc], timeout=1)
    assert proc.returncode == 0, out.read_text()

    # in-process, as a library: the same files are not uploaded twice
    from kdsearch.report.dashboard import start_dashboard

    server, notes = start_dashboard(storage, port=0)
    assert any("report.html: already uploaded" in n for n in notes), notes
    server.start()
    try:
        assert get_json(f"http://127.0.0.1:{server.port}/api/meta")["artifact_is_available"] is True
    finally:
        server.stop()
