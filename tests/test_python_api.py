"""The docs page "Your own models and data" (docs/own-models.md) as a user runs it, the Python API, and the exported students."""

from __future__ import annotations

import json
import re
import uuid
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import optuna
import pytest
import torch
from helpers import REPO
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

import kdsearch
from kdsearch.cli import app
from kdsearch.errors import KdsearchError
from kdsearch.search.results import FinalComparison

README = REPO / "docs" / "own-models.md"  # the docs page that holds the example (it moved there from README.md)
runner = CliRunner()
FILES = ("student.safetensors", "student.torchscript.pt", "student.onnx", "card.json")


def readme_block(first_line: str) -> str:
    """The fenced block of the example's docs page (``README``: docs/own-models.md, "Your own models and data")
    that starts with ``first_line`` (e.g. ``# mynets.py``)."""
    blocks = re.findall(r"```(?:python|toml|bash)\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    found = [b for b in blocks if b.startswith(first_line)]
    assert found, f"{README.relative_to(REPO)} has no block starting with {first_line!r}"
    return found[0]


def separable_arrays(n: int, size: int = 12, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, size, size) whose brightness says their class, and the labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 80, (n, size, size)) + y[:, None, None] * 80
    return x.astype(np.uint8), y.astype(np.int64)


def onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.slow
def test_readme_example_runs_and_ships_the_student(tmp_path, monkeypatch):
    """The three files of the docs page's example, a teacher checkpoint, `kdsearch run`, then `kdsearch export`."""
    monkeypatch.chdir(tmp_path)
    suffix = uuid.uuid4().hex[:6]  # unique module names: tests share one interpreter
    nets, data = f"mynets_{suffix}", f"mydata_{suffix}"
    (tmp_path / f"{nets}.py").write_text(readme_block("# mynets.py"))
    (tmp_path / f"{data}.py").write_text(readme_block("# mydata.py"))
    toml = readme_block("# my.toml").replace('"mynets:', f'"{nets}:').replace('"mydata:', f'"{data}:')
    (tmp_path / "my.toml").write_text(toml)
    (tmp_path / "data").mkdir()
    x_train, y_train = separable_arrays(300)
    x_test, y_test = separable_arrays(60, seed=1)
    np.savez(
        tmp_path / "data" / "my_arrays.npz",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        classes=np.array(["dark", "grey", "bright"]),
    )
    import importlib
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        teacher = importlib.import_module(nets).Teacher(num_classes=3, in_channels=1, width=64)
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")

    tiny = [
        "--set",
        "student.epochs=1",
        "--set",
        "final.seeds=2",
        "--set",
        f'runtime.cache_dir="{tmp_path / "cache"}"',
        "--set",
        "teacher.fine_tune_epochs=1",
    ]
    result = runner.invoke(app, ["run", "--spec", "my.toml", "--trials", "3", *tiny])
    assert result.exit_code == 0, result.output
    # teacher.checkpoint = "teacher.pt" means the study file's folder: the line names the resolved file
    assert f"loaded from {tmp_path / 'teacher.pt'}, fine-tuned 1 epoch" in result.output
    students = tmp_path / "runs" / "my_study" / "students"
    best = [m for m in ("kd", "lskd", "dkd") if (students / m).is_dir()]
    assert best, result.output
    for method in best:
        folder = students / method
        assert all((folder / f).is_file() for f in FILES)
        assert len(list((folder / "seeds").glob("seed-*.safetensors"))) == 2
        card = json.loads((folder / "card.json").read_text())
        assert card["class_names"] == ["dark", "grey", "bright"] and card["method"] == method
        assert card["input"]["channels"] == 1 and card["input"]["image_size"] == 12
        assert card["architecture"] == f"{nets}:Student" and card["arch_args"] == {"width": 16}
        assert card["seed"] in [s["seed"] for s in card["seeds"]]
    report = (tmp_path / "runs" / "my_study" / "report.html").read_text()
    assert 'id="students"' in report and f'href="students/{best[0]}/student.onnx"' in report

    shipped = runner.invoke(
        app,
        [
            "export",
            "--spec",
            "my.toml",
            "--epochs",
            "2",
            "--train-on",
            "train+val",
            "--out",
            "shipped",
            "--device",
            "cpu",
        ],
    )
    assert shipped.exit_code == 0, shipped.output
    card = json.loads((tmp_path / "shipped" / "card.json").read_text())
    assert card["training"] == {"epochs": 2, "batch_size": 128, "lr": 0.001, "train_on": "train+val"}
    assert 0.0 <= card["test"]["accuracy"] <= 1.0
    # the study's best trial, its method and params, at the final comparison's first seed
    study = optuna.load_study(study_name="my_study", storage=f"sqlite:///{tmp_path / 'runs' / 'my_study' / 'study.db'}")
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    method = best.params["method"]
    assert card["trial"] == best.number and card["method"] == method and card["seed"] == 1000
    assert card["params"] == pytest.approx(
        {k.removeprefix(f"{method}_"): v for k, v in best.params.items() if k.startswith(f"{method}_")}
    )
    # train+val: the validation images joined the pool (more rows, so more steps than the study's epochs)
    steps = re.search(r"for 2 epochs on train\+val, seed 1000 \((\d+) rows, (\d+) steps per epoch\)", shipped.output)
    assert steps, shipped.output
    pool = re.search(
        r"(\d+) val / \d+ test images, \d+ classes; student pool (\d+) labeled \+ (\d+) unlabeled", result.output
    )
    assert pool, result.output
    n_val, n_labeled, n_unlabeled = (int(g) for g in pool.groups())
    assert int(steps.group(1)) == n_labeled + n_unlabeled + n_val  # every validation image was trained on
    assert "export: test accuracy" in shipped.output
    # the run's final comparison scored test once: this export is the second scoring, a re-run, said so
    assert "(test-split scoring 2 of this study: a re-run;" in shipped.output
    assert card["test_scoring"].startswith("scoring 2 of this study's test split")

    # the shipped files give the same logits: safetensors into a fresh class, TorchScript, ONNX
    sys.path.insert(0, str(tmp_path))
    try:
        fresh = importlib.import_module(nets).Student(num_classes=3, in_channels=1, width=16)
    finally:
        sys.path.remove(str(tmp_path))
    fresh.load_state_dict(load_file(tmp_path / "shipped" / "student.safetensors"))
    x = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        expected = fresh.eval()(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(tmp_path / "shipped" / "student.torchscript.pt"))
    assert torch.allclose(scripted(x), expected, atol=1e-5)
    assert np.abs(onnx_logits(tmp_path / "shipped" / "student.onnx", x) - expected.numpy()).max() <= 1e-4


@pytest.mark.slow
def test_a_trial_that_is_not_there_cannot_be_exported(write_spec, tmp_path):
    spec = write_spec(epochs=1)
    assert runner.invoke(app, ["run", "--spec", str(spec), "--trials", "1"]).exit_code == 0
    result = runner.invoke(app, ["export", "--spec", str(spec), "--trial", "7", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "trial 7 is not a completed trial of 'tiny'" in result.output
    result = runner.invoke(app, ["export", "--spec", str(spec), "--method", "dkd", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no completed 'dkd' trial" in result.output


class Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten())
        self.head = nn.Linear(72, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Student(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _datasets() -> dict:
    x, y = separable_arrays(240)
    xt, yt = separable_arrays(60, seed=1)
    return {
        "train": TensorDataset(torch.from_numpy(x)[:, None], torch.from_numpy(y)),
        "test": TensorDataset(torch.from_numpy(xt)[:, None], torch.from_numpy(yt)),
        "classes": ["a", "b", "c"],
    }


@pytest.mark.slow
def test_run_study_from_python_with_objects(tmp_path):
    teacher = Teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    spec = {
        "name": "api",
        "output_dir": str(tmp_path / "api"),
        "data": {"val_size": 40, "labeled": 100, "unlabeled": 100},
        "student": {"epochs": 1},
        "search": {"trials": 5, "methods": ["kd"]},
        "final": {"seeds": 2},
        "runtime": {"cache_dir": str(tmp_path / "cache")},
    }
    data = _datasets()
    result = kdsearch.run_study(
        spec, trials=2, teacher=teacher, student=lambda: Student(width=4), data=data, verbose=False
    )
    assert set(result.best) == {"kd"}
    assert set(result.best["kd"]["params"]) == {"temperature", "alpha"}
    assert result.best["kd"]["trial"] in (0, 1) and 0.0 <= result.best["kd"]["value"] <= 1.0
    assert [s.label for s in result.comparison.students] == [
        "best kd",
        "untuned kd (T=4, α=0.1)",
        "scratch",
        "pseudo-label",
    ]
    assert all([r.seed for r in s.runs] == result.comparison.seeds == [1000, 1001] for s in result.comparison.students)
    assert result.comparison == FinalComparison.read(result.study)  # what the report reads back
    assert result.report_path.is_file()
    assert isinstance(result.study, optuna.Study) and len(result.study.trials) == 2
    files = result.students["kd"].files
    assert {Path(p).name for p in files.values()} == set(FILES) and all(Path(p).is_file() for p in files.values())
    card = json.loads(Path(files["card"]).read_text())
    assert card["architecture"] == "python" and card["class_names"] == ["a", "b", "c"]
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # used as is, never changed

    # the handed teacher is cached by its weights: the same weights hit the cache, other weights do not
    again = kdsearch.run_study(
        spec,
        trials=1,
        teacher=teacher,
        student=lambda: Student(width=4),
        data=data,
        name="api2",
        output_dir=tmp_path / "api2",
        verbose=False,
    )
    assert len(again.study.trials) == 1
    assert len(list((tmp_path / "cache" / "teachers").glob("*.pt"))) == 1
    other = Teacher()
    kdsearch.run_study(
        spec,
        trials=1,
        teacher=other,
        student=lambda: Student(width=4),
        data=data,
        name="api3",
        output_dir=tmp_path / "api3",
        verbose=False,
    )
    assert len(list((tmp_path / "cache" / "teachers").glob("*.pt"))) == 2

    shipped = kdsearch.export_student_of(
        result,
        tmp_path / "shipped",
        epochs=2,
        teacher=teacher,
        student=lambda: Student(width=4),
        data=data,
        verbose=False,
    )
    fresh = Student(width=4)
    fresh.load_state_dict(load_file(shipped.files["safetensors"]))
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        assert np.abs(onnx_logits(shipped.files["onnx"], x) - fresh.eval()(x).numpy()).max() <= 1e-4


def test_objects_that_do_not_fit_are_one_clear_error(tmp_path):
    spec = {
        "name": "bad",
        "output_dir": str(tmp_path / "bad"),
        "runtime": {"cache_dir": str(tmp_path / "cache")},
        "data": {"val_size": 40, "labeled": 100, "unlabeled": 100},
    }
    with pytest.raises(KdsearchError, match="student= must be a factory"):
        kdsearch.run_study(spec, student=Student(), data=_datasets(), verbose=False)
    with pytest.raises(KdsearchError, match="teacher= must be a torch.nn.Module"):
        kdsearch.run_study(spec, teacher=lambda: Teacher(), data=_datasets(), verbose=False)
    with pytest.raises(KdsearchError, match=r"expected \(N, 3\) logits"):
        kdsearch.run_study(
            spec, teacher=nn.Sequential(nn.Flatten(), nn.Linear(144, 5)), data=_datasets(), verbose=False
        )
