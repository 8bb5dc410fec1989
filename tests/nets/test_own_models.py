"""A user's own teacher and student: import paths with arch_args, whole-model teacher files, clear errors."""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from kdsearch.cli import app
from kdsearch.nets.models import layer_before_last_linear

runner = CliRunner()

NETS = '''
import torch
from torch import nn


class Teacher(nn.Module):
    """A user's teacher: kdsearch passes num_classes and in_channels (it takes no image_size) and arch_args."""

    def __init__(self, num_classes, in_channels, width=32):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def student(num_classes, width=8):
    """A factory function taking only num_classes and its own argument."""
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(width * 16, num_classes))


def broken(num_classes):
    raise ValueError("width must be even")


def not_a_model(num_classes):
    return 42


def wrong_head(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 3))


SOMETHING = 1
'''


@pytest.fixture
def nets(tmp_path) -> str:
    """A user's module beside the study file (the study's folder is importable); a unique name per test."""
    name = f"mynets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(NETS)
    return name


def run(spec: Path, *args: str):
    return runner.invoke(app, ["run", "--spec", str(spec), "--trials", "2", *args])


@pytest.mark.slow
def test_models_from_the_users_module_with_arch_args(write_spec, tmp_path, nets):
    spec = write_spec(epochs=1)
    result = run(
        spec,
        "--set",
        f'teacher.arch="{nets}:Teacher"',
        "--set",
        "teacher.arch_args={width = 16}",
        "--set",
        f'student.arch="{nets}:student"',
        "--set",
        "student.arch_args={width = 4}",
        "--set",
        'search.methods=["kd", "cosine"]',
    )
    assert result.exit_code == 0, result.output
    assert "trained and cached" in result.output
    # the default feature layers of a user's model: the module just before the last Linear, said in the output
    assert "teacher feature layer: 'body'" in result.output and "student feature layer: '3'" in result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    cost = study.user_attrs["final_comparison"]["cost"]
    # arch_args reached the builders: width 16 teacher, width 4 student (params counted in the cost table)
    assert cost[f"teacher ({nets}:Teacher)"]["params"] == (16 * 9 + 16) + 2 * 16 + (16 * 16 * 10 + 10)
    assert cost[f"student ({nets}:student)"]["params"] == (4 * 9 + 4) + (4 * 16 * 10 + 10)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("no_such_module_xyz:Net", "no module named 'no_such_module_xyz' in {folder}, "),
        ("{nets}:Missing", "has no attribute 'Missing'; it defines: SOMETHING, Teacher, broken"),
        ("{nets}:broken", "student.arch = '{nets}:broken' raised ValueError: width must be even"),
        ("{nets}:not_a_model", "returned 'int', not a torch.nn.Module"),
        ("{nets}:wrong_head", "gives outputs of shape (2, 3) for 2 images; expected (N, 10) logits"),
        ("{nets}:SOMETHING", "names 'int', not a class or function"),
    ],
)
def test_a_bad_student_import_is_one_line_before_the_teacher_is_built(write_spec, tmp_path, nets, arch, message):
    spec = write_spec(cache=tmp_path / "fresh-cache")
    arch = arch.format(nets=nets)
    result = run(spec, "--set", f'student.arch="{arch}"')
    assert result.exit_code == 2, result.output
    assert message.format(nets=nets, folder=tmp_path) in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "fresh-cache" / "teachers").exists() or not any(
        (tmp_path / "fresh-cache" / "teachers").glob("*.pt")
    )


def test_a_spec_arch_that_is_neither_a_name_nor_an_import_path_is_refused(write_spec):
    result = run(write_spec(), "--set", 'student.arch="my nets.Student"')
    assert result.exit_code == 2
    assert (
        "unknown model 'my nets.Student'; give a known model" in result.output
        and "'package.module:callable'" in result.output
    )
    result = run(write_spec(), "--set", "student.arch=resnet18", "--set", "student.arch_args={width = 3}")
    assert result.exit_code == 2 and "arch_args: only an import-path, timm/ or hf/ arch, or a seed net" in result.output
    result = run(write_spec(), "--set", "student.arch_args={depth = 3}")  # light_nn takes a width, nothing else
    assert result.exit_code == 2 and "light_nn takes only width (a channel multiplier), not depth" in result.output


def _teacher_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 14 * 14, 10)
    ).eval()


@pytest.mark.slow
def test_a_torchscript_teacher_needs_no_class(write_spec, tmp_path):
    path = tmp_path / "teacher.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(_teacher_module(), torch.zeros(2, 1, 28, 28)), str(path))
    spec = write_spec(epochs=1)
    result = run(spec, "--set", 'teacher.arch="torchscript"', "--set", f'teacher.checkpoint="{path}"')
    assert result.exit_code == 0, result.output
    assert f"loaded from {path}, not fine-tuned" in result.output
    # feature methods cannot read a layer inside a TorchScript graph: one line that says what to do instead
    again = run(
        spec,
        "--study",
        "ts-cosine",
        "--set",
        'teacher.arch="torchscript"',
        "--set",
        f'teacher.checkpoint="{path}"',
        "--set",
        'search.methods=["cosine"]',
    )
    assert again.exit_code == 2, again.output
    assert "cannot read a layer of a TorchScript teacher" in again.output and "'exported'" in again.output


@pytest.mark.slow
def test_an_exported_program_teacher_keeps_its_layers_for_feature_methods(write_spec, tmp_path):
    model = _teacher_module()
    program = torch.export.export(model, (torch.zeros(2, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "teacher.pt2"
    torch.export.save(program, str(path))
    spec = write_spec(epochs=1)
    result = run(
        spec,
        "--set",
        'teacher.arch="exported"',
        "--set",
        f'teacher.checkpoint="{path}"',
        "--set",
        'search.methods=["cosine"]',
    )
    assert result.exit_code == 0, result.output
    assert "teacher feature layer: '3'" in result.output  # the Flatten before its Linear, found in the program


def test_whole_model_teacher_needs_its_file(write_spec):
    result = run(write_spec(), "--set", 'teacher.arch="exported"')
    assert result.exit_code == 2 and "arch = 'exported' takes the whole model from checkpoint" in result.output
    result = run(write_spec(), "--set", 'student.arch="torchscript"')
    assert result.exit_code == 2 and "is for a teacher used as it is" in result.output


def test_layer_before_last_linear():
    resnet_like = nn.Sequential()
    resnet_like.add_module("conv", nn.Conv2d(1, 2, 3))
    resnet_like.add_module("pool", nn.AdaptiveAvgPool2d(1))
    resnet_like.add_module("fc", nn.Linear(2, 3))
    assert layer_before_last_linear(resnet_like) == "pool"
    nested = nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(4, 4)), nn.ReLU())
    assert layer_before_last_linear(nested) == "0.0"  # the Linear is in the first child: look inside it
    assert layer_before_last_linear(nn.Conv2d(1, 1, 1)) == ""
