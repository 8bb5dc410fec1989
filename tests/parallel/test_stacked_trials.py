"""K trials in flight per process (runtime.trials_per_device), trained stacked, end to end through the CLI."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from helpers import started
from optuna.trial import TrialState
from typer.testing import CliRunner

from kdsearch.cli import app, with_trials_per_device
from kdsearch.config.load import apply_overrides, load_spec, spec_from_dict
from kdsearch.errors import KdsearchError
from kdsearch.parallel.workers import WORKER_ATTR
from kdsearch.search.storage import open_storage

KDSEARCH = [sys.executable, "-m", "kdsearch.cli"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# what search.make_objective stores on every trial (the worker loop adds WORKER_ATTR)
ONE_AT_A_TIME_ATTRS = {
    "seed",
    "teacher_mode",
    "epochs_run",
    "accuracy",
    "auc",
    "wall_time_s",
    "teacher_sha256",
    "device",
    "torch_version",
}


def trials_of(tmp_path) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    return optuna.load_study(study_name="tiny", storage=storage).trials


def test_the_cli_flag_sets_the_spec_field_and_bad_values_are_refused(write_spec):
    assert with_trials_per_device(["a=1"], "4") == ["a=1", "runtime.trials_per_device=4"]
    assert with_trials_per_device(None, "auto") == ['runtime.trials_per_device="auto"']
    assert with_trials_per_device(None, None) is None
    raw = load_spec(write_spec()).model_dump(mode="json")
    spec = spec_from_dict(apply_overrides(raw, ['runtime.trials_per_device="auto"']))
    assert spec.runtime.trials_per_device == "auto"
    for bad in ("0", '"many"'):
        with pytest.raises(KdsearchError, match="trials_per_device"):
            spec_from_dict(apply_overrides(raw, [f"runtime.trials_per_device={bad}"]))


@pytest.mark.slow
def test_three_trials_per_device_run_exactly_the_asked_trials_and_store_what_one_at_a_time_stores(write_spec, tmp_path):
    """--trials 7 with K = 3 ends with exactly 7 finished trials, none RUNNING; each has the user attrs and
    per-epoch intermediate values of a trial run one at a time; the stacked ones were in flight together."""
    spec = write_spec(epochs=2, pruner="median", startup=2)
    spec.write_text(spec.read_text().replace("trials = 3\n", "trials = 3\nmethods = ['kd', 'lskd', 'dkd']\n"))
    result = CliRunner().invoke(app, ["run", "--spec", str(spec), "--trials", "7", "-k", "3"])
    assert result.exit_code == 0, result.output
    assert "3 trials at once on cpu" in result.output
    assert "one seed at a time" not in result.output  # the final comparison's seeds were trained stacked too
    trials = trials_of(tmp_path)
    assert len(trials) == 7 and all(t.state in FINISHED for t in trials), [t.state for t in trials]
    assert {t.params["method"] for t in trials} <= {"kd", "lskd", "dkd"}
    for t in trials:
        assert set(t.user_attrs) == {*ONE_AT_A_TIME_ATTRS, WORKER_ATTR}
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs_run"] + 1))
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(t.intermediate_values[2])
    study = optuna.load_study(study_name="tiny", storage=open_storage(f"sqlite:///{tmp_path / 'run' / 'study.db'}"))
    final = study.user_attrs["final_comparison"]
    assert all(len(s["runs"]) == 2 for s in final["students"])  # final.seeds = 2
    first_three = sorted(trials, key=lambda t: t.number)[:3]
    latest_start = max(t.datetime_start for t in first_three)
    assert all(t.datetime_complete > latest_start for t in first_three)  # trained together, not one after another


@pytest.mark.slow
def test_a_method_that_cannot_stack_runs_one_at_a_time_and_says_why(write_spec, tmp_path):
    spec = write_spec(epochs=1)
    spec.write_text(spec.read_text().replace("trials = 3\n", "trials = 3\nmethods = ['kd', 'cosine']\n"))
    result = CliRunner().invoke(app, ["run", "--spec", str(spec), "--trials", "4", "-k", "2"])
    assert result.exit_code == 0, result.output
    trials = trials_of(tmp_path)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    methods = [t.params["method"] for t in trials]
    assert "cosine" in methods and "kd" in methods, methods  # the sampler's seed makes this draw fixed
    assert "trials of cosine run one at a time, not stacked: cosine reads feature maps" in result.output
    assert result.output.count("run one at a time") == 1  # said once


def wait_for_running(storage: str, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until ``n`` trials are RUNNING with a reported epoch, read straight from the SQLite file, read-only: opening
    it through Optuna while the process creates the schema would race it (two schema set-ups, one fails)."""
    path = Path(storage.removeprefix("sqlite:///"))
    query = (
        "SELECT COUNT(DISTINCT t.trial_id) FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
        "WHERE t.state = 'RUNNING'"
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before its trials were in flight"
        running = 0
        if path.is_file():
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
                    running = db.execute(query).fetchone()[0]
            except sqlite3.OperationalError:  # the tables are not made yet, or the file is locked for a moment
                pass
        if running >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"never saw {n} trials in flight")


@pytest.mark.slow
def test_ctrl_c_with_three_trials_in_flight_leaves_none_running(write_spec, tmp_path):
    spec = write_spec(epochs=30, extra="threads = 1\n")  # long trials: all three are still in flight at the signal
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    err = tmp_path / "run.err"
    with started([*KDSEARCH, "run", "--spec", str(spec), "--trials", "50", "-k", "3"], err) as proc:
        wait_for_running(storage, 3, proc)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    text = err.read_text()
    assert proc.returncode == 130, text[-2000:]
    assert "Traceback" not in text and "resume with: kdsearch run" in text
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=storage).trials]
    assert TrialState.RUNNING not in states and states.count(TrialState.FAIL) >= 3, states


@pytest.mark.slow
def test_a_worker_with_two_trials_per_device_runs_the_studys_count(write_spec, tmp_path):
    spec = write_spec(epochs=1)
    storage = f"journal:///{tmp_path / 'journal.log'}"
    result = CliRunner().invoke(
        app, ["worker", "--spec", str(spec), "--storage", storage, "--trials", "4", "--trials-per-device", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "2 trials at once on cpu" in result.output
    trials = optuna.load_study(study_name="tiny", storage=open_storage(storage)).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["teacher_sha256"] for t in trials}) == 1


def test_on_a_two_gpu_box_each_worker_gets_its_gpu_and_the_trials_per_device(write_spec, monkeypatch, tmp_path):
    """`run --workers 0 -k 8` on two GPUs: one worker per GPU (CUDA_VISIBLE_DEVICES), each told K = 8."""
    import torch

    from kdsearch.parallel import local_workers as workers

    monkeypatch.setattr(workers, "visible_gpus", lambda: ["0", "1"])
    spec = load_spec(write_spec())
    assert workers.worker_count(0, torch.device("cuda")) == 2
    plan = workers.worker_plan(spec, torch.device("cuda"), 2)
    assert [env for env, _, _ in plan] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    overrides = with_trials_per_device(None, "8")
    for rank, (_, device, threads) in enumerate(plan):
        cmd = workers.worker_command(spec, tmp_path / "s.toml", device, threads, 10, rank, overrides)
        assert cmd[cmd.index("--device") + 1] == "cuda"
        assert "runtime.trials_per_device=8" in cmd


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, fashion_root, teacher_cache):
    """The tiny study's data and teacher, prepared once for this module's in-process tests."""
    from conftest import TINY_SPEC

    from kdsearch.prepare import prepare, study_data
    from kdsearch.progress import Console

    folder = tmp_path_factory.mktemp("tiny-data")
    text = TINY_SPEC.format(
        name="tiny", out=folder / "run", root=fashion_root, epochs=1, pruner="none", startup=0, cache=teacher_cache
    )
    (folder / "tiny.toml").write_text(text)
    spec = load_spec(folder / "tiny.toml")
    quiet = Console(echo=lambda text, err=False: None, bars=False)
    return study_data(prepare(spec, quiet), quiet)


def test_auto_is_one_on_a_cpu_and_the_probe_measures_each_k(tiny_data):
    from kdsearch.parallel.stacked_trials import probe_trials_per_device, resolve_trials_per_device

    auto = tiny_data.spec.model_copy(
        update={"runtime": tiny_data.spec.runtime.model_copy(update={"trials_per_device": "auto"})}
    )
    assert resolve_trials_per_device(type(tiny_data)(**{**vars(tiny_data), "spec": auto})) == 1
    assert resolve_trials_per_device(tiny_data) == 1  # the tiny spec's default
    best, rates, why = probe_trials_per_device(tiny_data, candidates=(1, 2), steps=1)
    assert why is None
    assert set(rates) <= {1, 2} and 1 in rates and best in rates and all(r > 0 for r in rates.values())


class DataDependent(torch.nn.Module):
    """A student whose forward branches on a value: ``vmap`` cannot batch it."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(784, num_classes)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out if float(out.sum()) > 0 else -out


def test_the_k_probe_of_a_student_that_cannot_stack_says_so_instead_of_raising(tiny_data, monkeypatch):
    import kdsearch.parallel.stacked_trials as st

    monkeypatch.setattr(st, "fresh_student", lambda data: DataDependent())
    best, rates, why = st.probe_trials_per_device(tiny_data, candidates=(1, 2), steps=1)
    assert (best, rates) == (1, {}) and why and "Traceback" not in why


def test_the_k_probe_scores_a_real_validation_chunk(tiny_data, monkeypatch):
    import kdsearch.parallel.stacked_trials as st

    seen = []
    real = st.empty_stack
    monkeypatch.setattr(st, "empty_stack", lambda data, **kw: seen.append(len(kw["val"])) or real(data, **kw))
    st.probe_trials_per_device(tiny_data, candidates=(1,), steps=1)
    assert seen == [min(len(tiny_data.val), st.VAL_CHUNK)] and seen[0] > 2


def test_an_error_in_one_trial_thread_stops_the_others_and_leaves_no_trial_running(tiny_data):
    """One thread's error (here: its loop raises) ends every trial in flight as FAILED and is raised once."""
    import threading

    from kdsearch.parallel.stacked_trials import run_stacked

    study = optuna.create_study(direction="maximize")
    calls = []
    lock = threading.Lock()

    def work(objective, idle):
        with lock:
            calls.append(1)
            mine = len(calls)
        if mine == 1:
            time.sleep(1.0)  # the others' trials are in flight by now
            raise ValueError("boom in one thread")
        study.optimize(objective, n_trials=5)
        return 5

    with pytest.raises(ValueError, match="boom in one thread"):
        run_stacked(tiny_data, 3, work, echo=lambda text: None)
    states = [t.state for t in study.trials]
    assert states and TrialState.RUNNING not in states
    assert TrialState.FAIL in states  # the trials in flight when it happened


@pytest.mark.slow
def test_kill_9_with_three_trials_in_flight_they_are_retried_with_their_seeds(write_spec, tmp_path):
    """SIGKILL a worker with 3 stacked trials in flight: each turns FAILED once its heartbeat is stale, and the
    next worker (also stacked) re-runs each with its params and seed; the study reaches its count."""
    spec = write_spec(epochs=6, extra="threads = 1\nheartbeat_interval = 1\ngrace_period = 6\n")
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    cmd = [*KDSEARCH, "worker", "--spec", str(spec), "--storage", storage, "-k", "3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with started([*cmd, "--trials", "6"], tmp_path / "victim.log", with_stdout=True) as victim:
        wait_for_running(storage, 3, victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    killed = {t.number: t for t in optuna.load_study(study_name="tiny", storage=storage).trials}
    in_flight = [t for t in killed.values() if t.state == TrialState.RUNNING]
    assert len(in_flight) >= 3
    survivor = subprocess.run([*cmd, "--trials", "6"], capture_output=True, text=True, env=env, timeout=240)
    assert survivor.returncode == 0, survivor.stdout[-2000:] + survivor.stderr[-2000:]
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert sum(t.state in FINISHED for t in study.trials) == 6
    assert TrialState.RUNNING not in [t.state for t in study.trials]
    for dead in in_flight:
        assert study.trials[dead.number].state == TrialState.FAIL
        (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
        assert retry.params == dead.params and retry.user_attrs["seed"] == dead.user_attrs["seed"]
        assert retry.state in FINISHED
