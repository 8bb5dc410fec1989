"""The CLI as a user drives it: run a tiny study, resume it, rebuild its report, and bad input."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import optuna
import pytest
from helpers import started
from typer.testing import CliRunner

from kdsearch.cli import app

runner = CliRunner()
KDSEARCH = [sys.executable, "-m", "kdsearch.cli"]


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def states(storage: str, name: str = "tiny") -> list[str]:
    return [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials]


@pytest.mark.slow
def test_run_creates_study_final_comparison_and_report(write_spec, tmp_path):
    spec = write_spec(cache=tmp_path / "fresh-cache")
    result = invoke("run", "--spec", str(spec), "--trials", "3")
    assert result.exit_code == 0, result.output
    assert "trained and cached" in result.output
    assert (
        "teacher on validation: accuracy" in result.output
        and "test: scored only in the final comparison" in result.output
    )

    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for t in study.trials:
        assert t.params["method"] == "kd"
        assert 0.5 <= t.params["kd_temperature"] <= 20 and 0 <= t.params["kd_alpha"] <= 1
        assert {"seed", "epochs_run", "accuracy", "auc", "wall_time_s"} <= set(t.user_attrs)
        assert t.user_attrs["epochs_run"] == 2
        assert t.value == pytest.approx(t.user_attrs["accuracy"])
        assert sorted(t.intermediate_values) == [1, 2]

    final = study.user_attrs["final_comparison"]
    assert final["split"] == "test" and len(final["seeds"]) == 2
    # 600 unlabeled images: pseudo-label; the tiny spec leaves untuned KD out (tests/test_python_api.py has it)
    assert [s["label"] for s in final["students"]] == ["best kd", "scratch", "pseudo-label"]
    assert all([r["seed"] for r in s["runs"]] == final["seeds"] for s in final["students"])  # paired by seed
    assert final["students"][0]["trial"] == study.best_trial.number
    assert final["run"] == 1 and final["earlier_runs_trials"] == []
    # the test split is scored inside the final comparison only: the stored teacher record holds validation scores
    assert set(study.user_attrs["teacher"]) == {"val_accuracy", "val_auc"}
    assert 0 < final["teacher"]["accuracy"] <= 1 and 0 < final["teacher"]["auc"] <= 1

    report = tmp_path / "run" / "report.html"
    assert report.is_file() and "plotly" in report.read_text()[:2_000_000]
    assert "best kd (test, 2 seeds)" in result.output and "scratch (test, 2 seeds)" in result.output


@pytest.mark.slow
def test_second_run_reuses_teacher_and_adds_trials(write_spec, tmp_path):
    spec = write_spec()
    assert invoke("run", "--spec", str(spec), "--trials", "2").exit_code == 0
    again = invoke("run", "--spec", str(spec), "--trials", "2")
    assert again.exit_code == 0, again.output
    assert "loaded from cache (no retraining)" in again.output
    assert "resuming, 2 trials already" in again.output
    assert "already scored the test split (after 2 completed trials)" in again.output
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    assert states(storage) == ["COMPLETE"] * 4
    final = optuna.load_study(study_name="tiny", storage=storage).user_attrs["final_comparison"]
    assert final["run"] == 2 and final["earlier_runs_trials"] == [2] and final["n_complete_trials"] == 4


@pytest.mark.slow
def test_report_is_rebuilt_from_storage_alone(write_spec, tmp_path):
    spec = write_spec()
    assert invoke("run", "--spec", str(spec), "--trials", "2").exit_code == 0
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    out = tmp_path / "rebuilt.html"
    result = invoke("report", "--storage", storage, "--output", str(out))
    assert result.exit_code == 0, result.output
    assert out.is_file() and "Final comparison (test split)" in out.read_text() and 'id="cost"' in out.read_text()
    # a stored comparison this version cannot read (edited, another version) is computed again, as a re-run
    study = optuna.load_study(study_name="tiny", storage=storage)
    study.set_user_attr("final_comparison", {"students": "damaged"})
    again = invoke("report", "--storage", storage, "--output", str(out))
    assert again.exit_code == 0, again.output
    assert "final comparison ('final_comparison') is not readable" in again.output
    assert "no readable final comparison stored: running it now" in again.output
    final = optuna.load_study(study_name="tiny", storage=storage).user_attrs["final_comparison"]
    assert final["run"] == 2 and final["earlier_runs_trials"] == [] and "re-run 2" in out.read_text()


@pytest.mark.slow
def test_median_pruner_prunes_weak_trials(write_spec, tmp_path):
    spec = write_spec(epochs=3, pruner="median", startup=1)
    result = invoke("run", "--spec", str(spec), "--trials", "8")
    assert result.exit_code == 0, result.output
    found = states(f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert "PRUNED" in found and "COMPLETE" in found
    assert "pruned" in result.output


@pytest.mark.slow
def test_hyperband_pruner_is_accepted(write_spec, tmp_path):
    spec = write_spec(pruner="hyperband")
    assert invoke("run", "--spec", str(spec), "--trials", "2").exit_code == 0


@pytest.mark.parametrize(
    ("extra_args", "spec_extra", "message"),
    [
        (["--spec", "no/such/study.toml"], None, "study file no/such/study.toml not found"),
        (["--data-root", "/nonexistent/dir"], "", "apt-get install dataset-fashion-mnist"),
        (["--storage", "sqlite:////proc/forbidden/study.db"], "", "cannot open storage"),
        ([], "[methods.kd]\nalpha = [0.0, 2.0]\n", "methods.kd.alpha"),
        ([], "[methods.lolkd]\nalpha = [0.0, 1.0]\n", "unknown method"),
        ([], "junk = = 1\n", "is not valid TOML"),
        (["--set", 'runtime.cache_dir="/proc/kdsearch-cache"'], "", "the cache folder (runtime.cache_dir"),
        (
            ["--output-dir", "/proc/version"],
            "",
            "the output folder (--output-dir, output_dir in the spec) /proc/version is not",
        ),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(write_spec, extra_args, spec_extra, message):
    args = ["run", "--trials", "1", *extra_args]
    if spec_extra is not None:
        args += ["--spec", str(write_spec(extra=spec_extra))]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_a_setting_every_trial_would_fail_on_stops_the_run_before_the_first_trial(write_spec, tmp_path):
    """hint between two 1-D layers: one line before any trial; the fixed spec then runs in the same study."""
    spec = str(write_spec())
    hint = [
        "--set",
        'search.methods=["hint"]',
        "--set",
        'student.feature_layer="classifier"',
        "--set",
        'teacher.feature_layer="classifier"',
    ]
    result = runner.invoke(app, ["run", "--spec", spec, "--trials", "1", *hint])
    assert result.exit_code == 2, result.output
    assert "method 'hint' cannot pair student.feature_layer 'classifier'" in result.output
    assert "Traceback" not in result.output
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    assert states(storage) == []  # no trial was started, so none is lost or left FAILED
    fixed = runner.invoke(app, ["run", "--spec", spec, "--trials", "1", "--set", 'search.methods=["hint"]'])
    assert fixed.exit_code == 0, fixed.output  # nothing finished yet: the study takes the fixed settings
    assert states(storage) == ["COMPLETE"]


def test_a_foreign_study_of_the_same_name_is_refused(write_spec, tmp_path):
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    (tmp_path / "run").mkdir()
    optuna.create_study(study_name="tiny", storage=storage, direction="minimize")
    result = runner.invoke(app, ["run", "--spec", str(write_spec()), "--trials", "1"])
    assert result.exit_code == 2 and "a study named 'tiny' that kdsearch did not make" in result.output, result.output


@pytest.mark.slow
def test_the_printed_resume_command_keeps_the_runs_overrides(write_spec, tmp_path):
    spec = str(write_spec(epochs=1))
    first = invoke("run", "--spec", spec, "--trials", "1", "--set", "student.lr=0.002")
    assert first.exit_code == 0, first.output
    line = next(x for x in first.output.splitlines() if x.startswith("add trials with: "))
    args = shlex.split(line.removeprefix("add trials with: "))
    assert args[:2] == ["kdsearch", "run"] and args[-2:] == ["--trials", "N"] and "student.lr=0.002" in args
    again = invoke(*args[1:-1], "1")
    assert again.exit_code == 0, again.output  # the same settings: accepted, one trial added
    assert len(states(f"sqlite:///{tmp_path / 'run' / 'study.db'}")) == 2


@pytest.mark.slow
def test_real_process_error_has_no_traceback(tmp_path):
    proc = subprocess.run([*KDSEARCH, "run", "--spec", str(tmp_path / "missing.toml")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: study file") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ctrl_c_keeps_finished_trials_and_says_how_to_resume(write_spec, tmp_path):
    spec = write_spec(epochs=4)
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err_file:  # a file, not a pipe: nobody reads a pipe while we poll
        proc = subprocess.Popen(
            [*KDSEARCH, "run", "--spec", str(spec), "--trials", "200"],
            stderr=err_file,
            stdout=subprocess.DEVNULL,
            env=env,
        )
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        if "trials:" in err_path.read_text():  # the study exists: reading it now races no schema creation
            try:
                if states(storage).count("COMPLETE") >= 2:
                    break
            except Exception:  # study not created yet, or the file read mid-write
                pass
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    err = err_path.read_text()
    assert proc.returncode == 130, err
    assert "resume with: kdsearch run" in err and "Traceback" not in err
    found = states(storage)
    assert found.count("COMPLETE") >= 2
    assert "RUNNING" not in found  # the interrupted trial was marked, not left dangling


@pytest.mark.slow
def test_ctrl_c_while_the_teacher_trains_is_one_line_and_caches_nothing(write_spec, tmp_path):
    """Ctrl-C before any trial (here: teacher training) exits 130 with one line, no traceback, no half cache."""
    cache = tmp_path / "fresh-cache"
    spec = write_spec(cache=cache)
    err_path = tmp_path / "stderr.txt"
    cmd = [*KDSEARCH, "run", "--spec", str(spec), "--set", "teacher.epochs=200"]
    with started(cmd, err_path, sigint_ignored=True) as proc:  # as nohup starts it: kdsearch installs its own
        deadline = time.time() + 120
        while "teacher bn_cnn" not in err_path.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1.0)  # well inside its 200 epochs
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    err = err_path.read_text()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "Aborted" not in err, err
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix == ".pt"], "a teacher checkpoint was cached"


@pytest.mark.slow
def test_resume_with_changed_settings_is_refused_and_names_the_fields(write_spec, tmp_path):
    spec = write_spec()
    assert invoke("run", "--spec", str(spec), "--trials", "1").exit_code == 0
    changed = runner.invoke(
        app,
        [
            "run",
            "--spec",
            str(spec),
            "--trials",
            "1",
            "--set",
            'search.methods=["kd","dkd"]',
            "--set",
            "search.objective=auc",
        ],
    )
    assert changed.exit_code == 2, changed.output
    assert "already exists in this storage with other settings" in changed.output
    assert "search.methods: ['kd'] → ['kd', 'dkd']" in changed.output and "search.objective" in changed.output
    assert "Traceback" not in changed.output
    # a new study name is the way to change them
    assert (
        invoke(
            "run", "--spec", str(spec), "--trials", "1", "--study", "other", "--set", 'search.methods=["kd","dkd"]'
        ).exit_code
        == 0
    )


@pytest.mark.slow
def test_resumed_run_does_not_replay_the_first_runs_params(write_spec, tmp_path):
    spec = write_spec()
    assert invoke("run", "--spec", str(spec), "--trials", "2").exit_code == 0
    assert invoke("run", "--spec", str(spec), "--trials", "2").exit_code == 0
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}").trials
    first, second = [t.params for t in trials[:2]], [t.params for t in trials[2:]]
    assert first != second and all(p not in first for p in second)


def test_warmup_epochs_protect_that_many_epochs():
    from kdsearch.config.load import spec_from_dict
    from kdsearch.search.study import make_pruner

    study = optuna.create_study(
        direction="maximize",
        pruner=make_pruner(spec_from_dict({"search": {"pruner_startup_trials": 1, "pruner_warmup_epochs": 1}})),
    )
    good = study.ask()
    good.report(0.9, 1), good.report(0.9, 2)
    study.tell(good, 0.9)
    weak = study.ask()
    weak.report(0.1, 1)
    assert not weak.should_prune()  # epoch 1 is the warm-up
    weak.report(0.1, 2)
    assert weak.should_prune()


@pytest.mark.parametrize(("device", "message"), [("gpu", "is not a device"), ("cuda:7", "visible CUDA device")])
def test_unknown_or_missing_device_is_one_clear_line(write_spec, device, message):
    result = runner.invoke(app, ["run", "--spec", str(write_spec()), "--trials", "1", "--device", device])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_damaged_teacher_cache_is_retrained_not_a_traceback(write_spec, tmp_path):
    spec = write_spec(cache=tmp_path / "cache")
    assert invoke("teacher", "--spec", str(spec)).exit_code == 0
    (cached,) = (tmp_path / "cache" / "teachers").glob("*.pt")
    import torch

    for damage in (
        lambda: cached.write_bytes(b"garbage"),
        lambda: cached.write_bytes(b""),
        lambda: torch.save([1, 2], cached),
    ):
        damage()
        again = invoke("teacher", "--spec", str(spec))
        assert again.exit_code == 0 and "trained and cached" in again.output


@pytest.mark.slow
def test_report_needs_an_existing_study_and_a_file_to_write(write_spec, tmp_path):
    missing = runner.invoke(app, ["report", "--storage", f"sqlite:///{tmp_path / 'nowhere' / 'study.db'}"])
    assert missing.exit_code == 2 and "no study storage at" in missing.output, missing.output
    assert not (tmp_path / "nowhere").exists()  # no empty database made on the way
    assert invoke("run", "--spec", str(write_spec(epochs=1)), "--trials", "1").exit_code == 0
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    into_dir = runner.invoke(app, ["report", "--storage", storage, "--output", str(tmp_path)])
    assert into_dir.exit_code == 2 and "is a folder" in into_dir.output, into_dir.output
    assert invoke("report", "--storage", storage, "--output", str(tmp_path / "r.html")).exit_code == 0
    assert (tmp_path / "r.html").is_file()


def test_optuna_log_keeps_the_line_of_a_failed_trial_but_not_its_traceback():
    import logging

    from kdsearch.cli import _DropInterruptTracebacks
    from kdsearch.errors import KdsearchError

    def record(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            "optuna", logging.WARNING, __file__, 1, "Trial 3 failed", None, (type(error), error, None)
        )

    keep = _DropInterruptTracebacks()
    failed = record(KdsearchError("student.checkpoint does not fit"))
    assert keep.filter(failed) and failed.exc_info is None  # the line stays, the traceback goes
    other = record(ValueError("a bug"))
    assert keep.filter(other) and other.exc_info is not None  # a real bug keeps its traceback
    assert not keep.filter(record(KeyboardInterrupt()))


@pytest.mark.slow
def test_a_worker_joining_by_name_may_not_change_what_trials_measure(write_spec, tmp_path, fashion_root):
    assert invoke("run", "--spec", str(write_spec(epochs=1)), "--trials", "1").exit_code == 0
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    changed = runner.invoke(
        app, ["worker", "--storage", storage, "--study", "tiny", "--trials", "2", "--set", "student.lr=0.5"]
    )
    assert changed.exit_code == 2, changed.output
    assert "already exists in this storage with other settings (student.lr: 0.001 → 0.5)" in changed.output
    joined = invoke(
        "worker", "--storage", storage, "--study", "tiny", "--trials", "2", "--data-root", str(fashion_root)
    )
    assert joined.exit_code == 0, joined.output  # where the data lives may differ between machines
    assert states(storage) == ["COMPLETE", "COMPLETE"]


def test_out_of_memory_is_one_line_with_what_to_lower(capsys):
    import typer

    from kdsearch.cli import friendly

    def allocate() -> None:
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 68719476736 bytes."
        )

    with pytest.raises(typer.Exit) as exit_:
        friendly(allocate)()
    assert exit_.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory (") and "data.image_size" in err and "batch_size" in err

    def bug() -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="mat1"):  # other runtime errors are bugs: they keep their traceback
        friendly(bug)()


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_storage_file_of_something_else_is_one_line(write_spec, tmp_path, kind):
    import sqlite3

    path = tmp_path / ("journal.log" if kind == "journal" else "other.db")
    if kind == "journal":
        path.write_text("this is not a journal line\n")
    else:  # another application's database that happens to have a table named like Optuna's
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE studies (id TEXT, owner TEXT)")
    url = f"journal:///{path}" if kind == "journal" else f"sqlite:///{path}"
    result = runner.invoke(app, ["run", "--spec", str(write_spec()), "--storage", url, "--trials", "1"])
    assert result.exit_code == 2, result.output
    assert "the storage holds data that is not an Optuna study database" in result.output, result.output
