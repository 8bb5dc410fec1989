"""A study knows its code (issue 18, items 1-2): the user files its import paths run, student.checkpoint and a
handed student factory are fingerprinted; a resume or a worker with other code is refused before anything is
imported or trained; a spec read back from a study imports only what the study recorded, never the standard
library; the user's folders cannot shadow installed packages."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import kdsearch
from kdsearch.cli import app
from kdsearch.config.load import load_spec
from kdsearch.errors import KdsearchError
from kdsearch.nets.identity import code_identity, file_sha256, module_files
from kdsearch.nets.imports import use_python_path
from kdsearch.search.study import CODE_ATTR, create_study, recorded_code

runner = CliRunner()

STUDENT = """
from torch import nn


def student(num_classes, width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, num_classes))
"""


@pytest.fixture
def nets(tmp_path) -> str:
    """A user's student module beside the study file, with a unique name (modules stay imported in this process)."""
    name = f"idnets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(STUDENT)
    return name


def _study_with_a_finished_trial(spec_path: Path) -> optuna.Study:
    """The study of ``spec_path`` as a first run left it: created, its code recorded, one trial finished."""
    spec = load_spec(spec_path)
    use_python_path(spec.runtime.python_path)
    spec.resolved_output_dir().mkdir(parents=True, exist_ok=True)
    study = create_study(spec, spec.resolved_storage())
    study.set_user_attr(CODE_ATTR, code_identity(spec))
    study.add_trial(optuna.trial.create_trial(value=0.5))
    return study


def test_module_files_are_found_without_running_them(tmp_path):
    pkg = tmp_path / f"pkg_{uuid.uuid4().hex[:8]}"
    (pkg / "sub").mkdir(parents=True)
    marker = tmp_path / "ran"
    for init in (pkg / "__init__.py", pkg / "sub" / "__init__.py", pkg / "sub" / "mod.py"):
        init.write_text(f"open({str(marker)!r}, 'a').write({init.name!r})\n")
    use_python_path([tmp_path])
    files = module_files(f"{pkg.name}.sub.mod")
    assert files is not None
    assert [f.path for f in files] == [pkg / "__init__.py", pkg / "sub" / "__init__.py", pkg / "sub" / "mod.py"]
    assert {f.kind for f in files} == {"user"}
    assert not marker.exists(), "locating the files ran one of them"
    assert module_files(f"{pkg.name}.nope") is None
    assert {f.kind for f in module_files("optuna.samplers")} == {"installed"}
    assert [f.kind for f in module_files("subprocess")] == ["stdlib"]
    assert [f.kind for f in module_files("sys")] == ["stdlib"]  # built in, no file


def test_code_identity_holds_the_user_files_and_the_student_checkpoint(write_spec, tmp_path, nets):
    ckpt = tmp_path / "student.pt"
    torch.save({"w": torch.ones(2)}, ckpt)
    spec_path = write_spec()
    text = spec_path.read_text().replace("[student]\n", f'[student]\narch = "{nets}:student"\ncheckpoint = "{ckpt}"\n')
    text = text.replace("[teacher]\n", '[teacher]\narch = "torchvision.models:resnet18"\n')  # installed: not recorded
    spec_path.write_text(text)
    spec = load_spec(spec_path)
    use_python_path(spec.runtime.python_path)
    identity = code_identity(spec)
    assert identity == {
        "student.arch": {nets: file_sha256(tmp_path / f"{nets}.py")},
        "student.checkpoint": {"file": file_sha256(ckpt)},
    }


def test_a_resume_with_a_changed_student_module_is_refused_before_the_teacher(
    write_spec, tmp_path, nets, teacher_cache
):
    spec_path = write_spec(cache=tmp_path / "fresh-cache")
    spec_path.write_text(spec_path.read_text().replace("[student]\n", f'[student]\narch = "{nets}:student"\n'))
    study = _study_with_a_finished_trial(spec_path)
    before = recorded_code(study)
    (tmp_path / f"{nets}.py").write_text(STUDENT.replace("width=4", "width=6"))

    result = runner.invoke(app, ["run", "--spec", str(spec_path), "--trials", "2"])

    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert f"student.arch = '{nets}:student' (its module {nets}) is not what study 'tiny' was run with" in line
    assert "--study NEW_NAME" in line and "Traceback" not in result.output
    assert not (tmp_path / "fresh-cache" / "teachers").exists(), "the teacher was built before the refusal"
    assert len(study.trials) == 1 and recorded_code(study) == before

    (tmp_path / f"{nets}.py").write_text(STUDENT)  # the file the study ran with: accepted again
    cached = f'runtime.cache_dir="{teacher_cache}"'  # the session's teacher: no second teacher training
    result = runner.invoke(app, ["run", "--spec", str(spec_path), "--trials", "1", "--set", cached])
    assert result.exit_code == 0 and "is not what study" not in result.output, result.output


def test_a_resume_with_another_student_checkpoint_is_refused(write_spec, tmp_path):
    ckpt = tmp_path / "student.pt"
    torch.save(nn.Linear(2, 2).state_dict(), ckpt)
    spec_path = write_spec(cache=tmp_path / "fresh-cache")
    spec_path.write_text(spec_path.read_text().replace("[student]\n", f'[student]\ncheckpoint = "{ckpt}"\n'))
    _study_with_a_finished_trial(spec_path)
    torch.save(nn.Linear(2, 2).state_dict(), ckpt)  # other weights, same name

    result = runner.invoke(app, ["run", "--spec", str(spec_path), "--trials", "2"])

    assert result.exit_code == 2, result.output
    assert f"student.checkpoint {ckpt} is not what study 'tiny' was run with" in result.output


def test_a_changed_handed_student_factory_is_refused(fashion_root, tmp_path, teacher_cache):
    def small(num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 4), nn.ReLU(), nn.Linear(4, num_classes))

    def wider(num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 5), nn.ReLU(), nn.Linear(5, num_classes))

    spec = {
        "name": "handed",
        "output_dir": str(tmp_path / "run"),
        "data": {
            "root": str(fashion_root),
            "train_limit": 600,
            "test_limit": 100,
            "val_size": 100,
            "labeled": 100,
            "unlabeled": 200,
        },
        "teacher": {"epochs": 1},
        "student": {"epochs": 1},
        "search": {"trials": 1, "methods": ["kd"]},
        "final": {"seeds": 1},
        "runtime": {"cache_dir": str(teacher_cache)},
    }
    kdsearch.run_study(spec, student=small, trials=1, verbose=False)
    with pytest.raises(KdsearchError, match="the student factory handed to kdsearch.run_study is not what"):
        kdsearch.run_study(spec, student=wider, trials=2, verbose=False)
    study = optuna.load_study(study_name="handed", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert len(study.trials) == 1


@pytest.mark.parametrize("command", ["worker", "report", "export"])
def test_a_stored_study_naming_the_standard_library_is_not_imported(write_spec, tmp_path, command):
    spec_path = write_spec()
    spec_path.write_text(
        spec_path.read_text().replace(
            "[data]\n",
            '[data]\nsource = "python"\nfactory = "subprocess:getoutput"\nargs = { cmd = "touch '
            + str(tmp_path / "pwned")
            + '" }\n',
        )
    )
    study = _study_with_a_finished_trial(spec_path)
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    args = {"worker": ["--trials", "2"], "report": [], "export": ["--out", str(tmp_path / "out")]}[command]

    result = runner.invoke(app, [command, "--storage", url, "--study", study.study_name, *args])

    assert result.exit_code == 2, result.output
    assert "data.factory = 'subprocess:getoutput', in Python's standard library" in result.output
    assert not (tmp_path / "pwned").exists()


def test_a_worker_joining_by_name_imports_only_the_recorded_file(write_spec, tmp_path, nets):
    spec_path = write_spec(cache=tmp_path / "fresh-cache")
    spec_path.write_text(spec_path.read_text().replace("[student]\n", f'[student]\narch = "{nets}:student"\n'))
    study = _study_with_a_finished_trial(spec_path)
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    (tmp_path / f"{nets}.py").write_text(STUDENT + "\nprint('someone else wrote this')\n")

    result = runner.invoke(app, ["worker", "--storage", url, "--study", "tiny", "--trials", "2"])

    assert result.exit_code == 2, result.output
    assert (
        f"{tmp_path / (nets + '.py')} (student.arch = '{nets}:student') is not the file study 'tiny'" in result.output
    )
    assert "someone else wrote this" not in result.output
    assert nets not in sys.modules

    study.set_user_attr(CODE_ATTR, {})  # a record that does not cover the file: refused too
    result = runner.invoke(app, ["worker", "--storage", url, "--study", "tiny", "--trials", "2"])
    assert result.exit_code == 2, result.output
    assert "but recorded no digest of" in result.output and "--spec PATH" in result.output


def test_the_users_folder_does_not_shadow_installed_packages(tmp_path):
    (tmp_path / "plotly.py").write_text("raise SystemExit('the shadow was imported')\n")
    (tmp_path / "mine.py").write_text("VALUE = 7\n")
    code = (
        "import sys; from kdsearch.nets.imports import use_python_path, import_object;"
        f"use_python_path([{str(tmp_path)!r}]);"
        "print(import_object('mine:VALUE', field='x'));"
        "import plotly; print(plotly.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(kdsearch.__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(kdsearch.__file__).parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    value, plotly_file = proc.stdout.split()
    assert value == "7" and "site-packages" in plotly_file
