"""The soak harness (benchmarks/soak.py) in its small case, the gRPC proxy's faults included, and the exit codes
and stopping flags of `kdsearch worker` that job schedulers read (the recipes in deploy/ rely on them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from soak import recipe_command

from kdsearch.search.storage import open_storage

REPO = Path(__file__).resolve().parents[2]
SIMULATED = {**os.environ, "KDSEARCH_SIMULATE_EPOCH_S": "0.05", "PYTHONUNBUFFERED": "1"}


def test_both_recipes_run_the_same_worker_command():
    env = {
        "KDSEARCH_SPEC": "/s/study.toml",
        "KDSEARCH_TRIALS": "500",
        "KDSEARCH_K": "16",
        "KDSEARCH_MAX_TRIALS": "40",
        "SLURM_ARRAY_TASK_ID": "3",
        "JOB_COMPLETION_INDEX": "3",
    }
    slurm, k8s = recipe_command("slurm", env), recipe_command("k8s", env)
    assert slurm == k8s
    assert slurm[:3] == [sys.executable, "-m", "kdsearch"]
    assert slurm[3:] == [
        "worker",
        *("--spec", "/s/study.toml", "--trials", "500", "--rank", "3", "-k", "16", "--max-trials", "40"),
    ]
    assert not any("KDSEARCH_STORAGE" in w or "://" in w for w in slurm)  # the URL travels in the environment


def _soak(tmp_path: Path, *args: str, timeout: float = 420) -> dict:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "soak.py"),
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_soak_small_case_through_the_proxy_survives_killed_workers_a_killed_proxy_and_a_database_restart(tmp_path):
    """N = 32 in flight (4 processes x 8 trial threads) through `kdsearch storage-proxy` over PostgreSQL, workers
    and the proxy SIGKILLed mid-run, the database restarted: exactly the requested trials, each with all its
    values, none left running, no worker failed."""
    r = _soak(
        tmp_path,
        *("--storage", "grpc", "--in-flight", "32", "--workers", "4", "--trials", "160", "--epochs", "4"),
        *("--epoch-s", "0.2-0.6", "--faults", "kill-workers,kill-proxy,restart-postgres", "--time-limit", "300"),
    )
    assert r["ok"] and r["exact"] and r["finished"] == 160 and r["lost"] == []
    assert set(r["states"]) <= {"COMPLETE", "PRUNED", "FAIL"}
    assert sum(r["kills"].values()) >= 2
    assert r["max_running"] > 8  # trials of several processes were in flight at once
    assert r["latency_ms"]["ask"]["calls"] >= 160 and r["latency_ms"]["report"]["calls"] >= 160


@pytest.mark.slow
def test_soak_small_case_on_sqlite_and_postgresql_restarted(tmp_path):
    r = _soak(tmp_path, "--storage", "sqlite", "--in-flight", "32", "--workers", "4", "--trials", "120")
    assert r["ok"] and r["finished"] == 120 and r["max_connections"] is None
    r = _soak(
        tmp_path,
        *("--storage", "postgresql", "--in-flight", "32", "--workers", "4", "--trials", "160"),
        *("--faults", "restart-postgres", "--time-limit", "300"),
    )
    assert r["ok"] and r["finished"] == 160 and r["kills"]["postgres"] >= 1
    assert 0 < r["max_connections"] <= 100


def _worker(spec: Path, storage: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kdsearch", "worker", "--spec", str(spec), "--storage", storage, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=SIMULATED,
    )


@pytest.mark.slow
def test_worker_exit_codes_max_trials_and_stop_when_done(write_spec, tmp_path):
    spec = write_spec(epochs=2)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = _worker(spec, storage, "--trials", "5", "--max-trials", "2")
    out, _ = first.communicate(timeout=180)
    assert first.returncode == 0, out
    assert "done, ran 2 trials; the study holds 2 finished trials" in out, out

    study = optuna.load_study(study_name="tiny", storage=open_storage(storage))
    held = study.ask()  # RUNNING, of a live process (this one): nobody may fail it
    held.set_user_attr("worker", {"host": os.uname().nodename, "pid": os.getpid(), "start": "", "rank": 9})
    # 2 finished + 1 running = 3: a worker with --stop-when-done has nothing to do and exits 0 at once
    done = _worker(spec, storage, "--trials", "3", "--stop-when-done")
    out, _ = done.communicate(timeout=120)
    assert done.returncode == 0, out
    assert "done, ran 0 trials" in out, out
    # without it, the worker waits for the running trial (it may die and come back as a retry) until stopped
    waiting = _worker(spec, storage, "--trials", "3")
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = waiting.stdout.readline()
        lines.append(line)
        if "waiting for them" in line or not line:
            break
    assert waiting.poll() is None, "".join(lines)
    waiting.send_signal(signal.SIGTERM)  # what scancel and Kubernetes send
    rest, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest

    bad = _worker(tmp_path / "missing.toml", storage, "--trials", "3")
    out, _ = bad.communicate(timeout=60)
    assert bad.returncode == 2 and out.strip().startswith("error:") and "Traceback" not in out, out
