"""timm and Hugging Face models: builders, pretrained weights offline, re-initialised heads, the logits adapter,
feature taps, the import-path keyword rule, Hugging Face datasets, export, and whole studies from the CLI."""

from __future__ import annotations

import json
import logging
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from helpers import make_class_folder
from PIL import Image
from pydantic import ValidationError
from torch import nn
from typer.testing import CliRunner

from kdsearch.cli import app
from kdsearch.config.load import load_spec
from kdsearch.config.spec import DataSpec, StudySpec, TeacherSpec
from kdsearch.data import load_splits
from kdsearch.errors import KdsearchError
from kdsearch.nets import hub
from kdsearch.nets.models import FeatureTap, build_model, check_model_output, default_feature_layer, load_checkpoint
from kdsearch.nets.outputs import logits_of
from kdsearch.ship.export import export_student

runner = CliRunner()
X = torch.randn(2, 1, 28, 28)


def tiny_vit_config(**kw) -> transformers.ViTConfig:
    fields = (
        dict(
            image_size=28,
            patch_size=7,
            num_channels=1,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
        | kw
    )
    return transformers.ViTConfig(**fields)


@pytest.fixture(autouse=True)
def _fresh_notes():
    hub._NOTED.clear()  # each test sees its own one-time lines
    yield


# --- the logits adapter and the import-path keyword rule ----------------------------------------------------


def test_the_logits_adapter_reads_tensors_tuples_lists_dicts_and_model_outputs():
    t = torch.randn(2, 3)
    output = transformers.modeling_outputs.ImageClassifierOutput(logits=t)
    for out in (t, (t, "aux"), [t], {"logits": t, "x": 1}, OrderedDict(hidden=torch.zeros(1), logits=t), output):
        assert logits_of(out) is t
    with pytest.raises(KdsearchError, match=r"returns a dict with keys a, b; kdsearch reads logits from a tensor"):
        logits_of({"a": t, "b": 1})


class Returns(nn.Module):
    """A user's model returning its logits inside another structure."""

    def __init__(self, how: str, num_classes: int = 4) -> None:
        super().__init__()
        self.how = how
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 8))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        h = self.body(x)
        logits = self.head(h)
        return {"tuple": (logits, h), "dict": {"logits": logits, "features": h}, "str": "oops"}[self.how]


@pytest.mark.parametrize("how", ["tuple", "dict"])
def test_any_model_returning_a_structure_is_read_as_logits_everywhere(how):
    from kdsearch.nets.models import given_models

    with given_models(student=lambda: Returns(how)):
        model = build_model("python", 4, 1, 28, role="student")
    assert model(X).shape == (2, 4)
    check_model_output(model, role="student", arch="python", num_classes=4, in_channels=1, image_size=28)
    tap = FeatureTap(model, "body", role="student")
    model(X)
    assert tap.output.shape == (2, 8)
    tap.remove()


def test_an_output_without_logits_is_one_line_naming_the_arch():
    from kdsearch.nets.models import given_models

    with given_models(student=lambda: Returns("str")):
        model = build_model("python", 4, 1, 28, role="student")
    with pytest.raises(KdsearchError, match=r"^student.arch = 'python' returns a str; kdsearch reads logits"):
        check_model_output(model, role="student", arch="python", num_classes=4, in_channels=1, image_size=28)


def test_the_import_path_builder_passes_only_the_shape_keywords_its_signature_names(tmp_path, monkeypatch):
    module = tmp_path / "kwnets.py"
    module.write_text(
        "from torch import nn\n"
        "def kwargs_only(**kwargs):\n"
        "    assert 'in_channels' not in kwargs and 'num_classes' not in kwargs\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(kwargs.get('in_chans', 1) * 784, kwargs['classes']))\n"
        "def named(num_classes, in_channels, width=4):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.Flatten(), nn.Linear(width * 26 * 26, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("kwnets:kwargs_only", 10, 1, 28, args={"classes": 3, "in_chans": 1}, role="student")
    assert model(X).shape == (2, 3)
    # arch_args beat the shape keywords kdsearch passes
    model = build_model("kwnets:named", 10, 1, 28, args={"num_classes": 5, "width": 2}, role="student")
    assert model(X).shape == (2, 5)
    with pytest.raises(KdsearchError) as err:
        build_model("kwnets:named", 10, 1, 28, args={"depth": 3}, role="student")
    assert "unexpected keyword argument 'depth'" in str(err.value)
    assert "kdsearch passed: num_classes=10, in_channels=1, depth=3" in str(err.value)
    assert "student.arch_args" in str(err.value)


# --- timm -------------------------------------------------------------------------------------------------------


def test_a_timm_student_builds_with_in_chans_and_taps_forward_features():
    model = build_model("timm/mobilenetv3_small_050", 10, 1, 28, role="student")
    assert model(X).shape == (2, 10)
    layer = default_feature_layer("timm/mobilenetv3_small_050")
    assert layer == "forward_features"
    tap = FeatureTap(model, layer, role="student")
    model(X)
    assert tap.output.shape == model.forward_features(X).shape and tap.output.dim() == 4
    tap.remove()
    assert "forward_features" not in model.__dict__  # the class's method again
    with pytest.raises(KdsearchError, match=r"timm .* has no model 'mobilenetv3_smal_050'; close names: mobilenetv3"):
        build_model("timm/mobilenetv3_smal_050", 10, 1, 28, role="student")


def test_a_timm_checkpoint_with_another_class_count_gets_a_new_head_with_one_line(tmp_path, caplog):
    trained = build_model("timm/resnet10t", 5, 1, 28, role="teacher")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in trained.state_dict().items()}, folder / "model.safetensors"
    )
    model = build_model("timm/resnet10t", 10, 1, 28, role="teacher")
    head_before = model.fc.weight.clone()
    with caplog.at_level(logging.WARNING, logger="kdsearch"):
        load_checkpoint(model, folder, role="teacher", arch="timm/resnet10t")
    assert "classifier head (fc) is for 5 classes; re-initialised" in caplog.text
    assert model._kdsearch_reinit_head == "fc"
    assert torch.equal(model.conv1[0].weight, trained.conv1[0].weight)
    assert torch.equal(model.fc.weight, head_before)
    assert model(X).shape == (2, 10)


def _fake_hub_cache(cache: Path, repo: str, state: dict) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/model.safetensors}."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snap = folder / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, snap / "model.safetensors")
    return snap / "model.safetensors"


def test_timm_pretrained_weights_come_from_the_local_cache_and_offline_misses_are_one_line(
    tmp_path, monkeypatch, caplog
):
    import timm

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KdsearchError, match=r"teacher.pretrained: the weights of timm/resnet10t .* are not in the"):
        build_model("timm/resnet10t", 10, 3, 32, pretrained=True, role="teacher")
    published = timm.create_model("resnet10t", pretrained=False)  # 1000 classes, as published
    _fake_hub_cache(tmp_path / "hub", timm.models.get_pretrained_cfg("resnet10t").hf_hub_id, published.state_dict())
    with caplog.at_level(logging.WARNING, logger="kdsearch"):
        model = build_model("timm/resnet10t", 10, 3, 32, pretrained=True, role="teacher")
    assert "pretrained head is for 1000 classes; re-initialised for 10" in caplog.text
    assert torch.equal(model.conv1[0].weight, published.conv1[0].weight)
    assert model.fc.out_features == 10 and model._kdsearch_reinit_head == "fc"


def test_a_missing_extra_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(
        KdsearchError, match=r"arch 'timm/resnet18' needs timm, which is not installed: pip install 'kdsearch\[timm\]'"
    ):
        build_model("timm/resnet18", 10, 1, 28, role="teacher")


# --- Hugging Face transformers ---------------------------------------------------------------------------------


def test_a_saved_hf_vit_loads_offline_with_a_new_head_and_an_hf_config_student_fits_the_data(tmp_path, caplog):
    teacher_dir = tmp_path / "vit"
    transformers.ViTForImageClassification(tiny_vit_config(num_labels=5)).save_pretrained(teacher_dir)
    with caplog.at_level(logging.WARNING, logger="kdsearch"):
        teacher = build_model(f"hf/{teacher_dir}", 10, 1, 28, role="teacher")
    assert "vit's head is for 5 classes; re-initialised for 10" in caplog.text
    assert teacher(X).shape == (2, 10) and teacher._kdsearch_reinit_head == "classifier"
    tap = FeatureTap(teacher, "hidden_states[-1]", role="teacher")
    assert teacher(X).shape == (2, 10)  # logits still, with hidden states on
    assert tap.output.shape == (2, 17, 16)
    tap.remove()
    assert not teacher.config.output_hidden_states
    with pytest.raises(KdsearchError, match=r"has 2 hidden states \(hidden_states\[0\] to hidden_states\[1\]\)"):
        tap = FeatureTap(teacher, "hidden_states[5]", role="teacher")
        teacher(X)
    tap.remove()
    # a student from a config file: its channels and image size follow the data, arch_args set config fields
    tiny_vit_config(num_channels=3, image_size=224).to_json_file(tmp_path / "student.json")
    student = build_model(f"hf-config/{tmp_path / 'student.json'}", 10, 1, 28, args={"hidden_size": 8}, role="student")
    assert student.config.num_channels == 1 and student.config.image_size == 28 and student.config.hidden_size == 8
    assert student(X).shape == (2, 10)
    assert default_feature_layer("hf-config/x", lambda: student) == "vit"
    with pytest.raises(KdsearchError, match=r"is not a save_pretrained folder \(no config.json\)"):
        build_model(f"hf/{tmp_path}", 10, 1, 28, role="teacher")


@pytest.mark.parametrize("arch", ["timm/mobilenetv3_small_050", "timm/resnet10t", "hf-config"])
def test_timm_and_hf_students_export_to_checked_onnx_and_torchscript(tmp_path, arch):
    if arch == "hf-config":
        tiny_vit_config().to_json_file(tmp_path / "vit.json")
        arch = f"hf-config/{tmp_path / 'vit.json'}"
    model = build_model(arch, 10, 1, 28, role="student")
    exported = export_student(
        model.eval(), tmp_path / "out", sample=torch.randn(4, 1, 28, 28), card={"architecture": arch}
    )
    assert exported.errors == {} and exported.onnx_max_abs_diff < 1e-4
    assert (tmp_path / "out" / "student.onnx").is_file()
    load = exported.card["load"]["safetensors"]
    assert ("timm.create_model" in load) if arch.startswith("timm/") else ("AutoModelForImageClassification" in load)


# --- the spec ----------------------------------------------------------------------------------------------------


def test_hub_archs_in_the_spec(tmp_path):
    with pytest.raises(ValidationError, match=r"write timm/ followed by a timm model name"):
        TeacherSpec(arch="timm/")
    with pytest.raises(ValidationError, match=r"pretrained = true is for timm/ archs"):
        TeacherSpec(arch="bn_cnn", pretrained=True)
    with pytest.raises(ValidationError, match=r"pretrained = true and checkpoint both"):
        TeacherSpec(arch="timm/resnet18", pretrained=True, checkpoint=Path("x.pt"))
    TeacherSpec(arch="timm/resnet18", arch_args={"drop_rate": 0.1})  # timm takes arch_args
    study = tmp_path / "s.toml"
    study.write_text('[teacher]\narch = "hf/my_vit"\n[student]\narch = "hf-config/cfg.json"\n')
    spec = load_spec(study)
    assert (
        spec.teacher.arch == f"hf/{tmp_path / 'my_vit'}" and spec.student.arch == f"hf-config/{tmp_path / 'cfg.json'}"
    )


def test_a_pretrained_teachers_mean_std_and_size_fill_what_the_study_leaves_unset(tmp_path):
    spec = StudySpec(teacher={"arch": "timm/resnet10t", "pretrained": True})
    data, said = hub.pretrained_input(spec)
    assert data.mean == [pytest.approx(0.449, abs=1e-3)] and data.image_size == 176  # one channel: averaged
    assert "from timm's pretrained_cfg of resnet10t" in said
    spec = StudySpec(teacher={"arch": "timm/resnet10t", "pretrained": True}, data={"image_size": 28})
    assert hub.pretrained_input(spec)[0].image_size == 28  # the study's own setting wins
    assert hub.pretrained_input(StudySpec(teacher={"arch": "timm/resnet10t"}))[1] is None  # fresh weights: no
    folder = tmp_path / "vit"
    transformers.ViTForImageClassification(tiny_vit_config(num_channels=3, image_size=32)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    data, said = hub.pretrained_input(StudySpec(teacher={"arch": f"hf/{folder}"}, data={"channels": 3}))
    assert data.mean == [0.5] * 3 and data.std == [0.25] * 3 and data.image_size == 32


# --- Hugging Face datasets ----------------------------------------------------------------------------------------


def _hf_dataset(n: int = 40):
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    return datasets.Dataset.from_dict({"img": images, "label": [i % 3 for i in range(n)]}, features=features)


def test_hf_source_reads_a_save_to_disk_folder_with_guessed_columns_and_mapped_splits(tmp_path):
    import datasets

    ds = _hf_dataset()
    datasets.DatasetDict({"train": ds.select(range(30)), "dev": ds.select(range(30, 40))}).save_to_disk(tmp_path / "d")
    spec = DataSpec(source="hf", root=tmp_path / "d", image_size=8, test_size=5, labeled=0, unlabeled=5)
    splits = load_splits(spec, cache_dir=tmp_path / "cache")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (25, 10, 5)  # dev is val; test carved from train
    assert splits.class_names == ["a", "b", "c"] and splits.in_channels == 3 and splits.image_size == 8
    again = load_splits(spec, cache_dir=tmp_path / "cache")
    assert again.fingerprint == splits.fingerprint and torch.equal(again.train.x, splits.train.x)
    with pytest.raises(
        KdsearchError, match=r"data.split_names: the dataset has no split 'validation'; it has train, dev"
    ):
        load_splits(spec.model_copy(update={"split_names": {"val": "validation"}}), cache_dir=tmp_path / "cache")
    with pytest.raises(
        KdsearchError, match=r"data.image_column 'pixels' is not a column of the dataset; its columns: img, label"
    ):
        load_splits(spec.model_copy(update={"image_column": "pixels"}), cache_dir=tmp_path / "cache")


def test_hf_source_reads_an_image_folder(tmp_path):
    make_class_folder(tmp_path / "imgs", {"red": 8, "green": 8})
    spec = DataSpec(source="hf", root=tmp_path / "imgs", image_size=8, val_size=4, test_size=4, labeled=0, unlabeled=2)
    splits = load_splits(spec, cache_dir=tmp_path / "cache")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 4)
    assert sorted(splits.class_names) == ["green", "red"]
    with pytest.raises(
        KdsearchError, match=r"data.root .* not found; point it at a folder written by dataset.save_to_disk"
    ):
        load_splits(spec.model_copy(update={"root": tmp_path / "none"}), cache_dir=tmp_path / "cache")


# --- whole studies from the command line ---------------------------------------------------------------------


STUDY = """\
name = "{name}"
output_dir = "{out}"
[data]
root = "{root}"
train_limit = 500
test_limit = 150
val_size = 100
labeled = 100
unlabeled = 250
{data}
[teacher]
{teacher}
[student]
{student}
epochs = 1
[search]
trials = 2
methods = ["kd", "cosine"]
pruner = "none"
[final]
seeds = 2
baselines = ["scratch"]
[runtime]
cache_dir = "{cache}"
"""


def _run_study(tmp_path: Path, fashion_root: Path, name: str, teacher: str, student: str, data: str = ""):
    spec = tmp_path / f"{name}.toml"
    spec.write_text(
        STUDY.format(
            name=name,
            out=tmp_path / "run",
            root=fashion_root,
            teacher=teacher,
            student=student,
            cache=tmp_path / "cache",
            data=data,
        )
    )
    result = runner.invoke(app, ["run", "--spec", str(spec)])
    assert result.exit_code == 0, result.output
    shipped = sorted((tmp_path / "run" / "students").glob("*/card.json"))  # one per method the trials tried
    assert shipped
    card = json.loads(shipped[0].read_text())
    assert card["errors"] == {} and card["files"]["onnx"] is not None
    return result.output, card


@pytest.mark.slow
def test_a_timm_teacher_checkpoint_and_a_timm_student_run_a_study_and_ship_onnx(tmp_path, fashion_root):
    trained = build_model("timm/resnet10t", 5, 1, 28, role="teacher")  # fine-tuned elsewhere on 5 classes
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "teacher.pt")
    output, card = _run_study(
        tmp_path,
        fashion_root,
        "timm",
        'arch = "timm/resnet10t"\ncheckpoint = "teacher.pt"\nfine_tune_epochs = 1',
        'arch = "timm/mobilenetv3_small_050"',
        data="image_size = 32",  # timm's 176 would be slow here
    )
    assert "classifier head (fc) is for 5 classes; re-initialised" in output
    assert "student feature layer: 'forward_features' (what timm's forward_features returns" in output
    # the normalisation the timm weights were trained with (the study sets none) reaches the shipped card
    assert "data: mean [0.449" in output and "image_size 176" not in output
    assert card["architecture"] == "timm/mobilenetv3_small_050" and card["input"]["mean"] == [
        pytest.approx(0.449, abs=1e-3)
    ]
    assert card["input"]["image_size"] == 32


@pytest.mark.slow
def test_a_saved_hf_vit_teacher_and_an_hf_config_student_run_a_study(tmp_path, fashion_root):
    transformers.ViTForImageClassification(tiny_vit_config(num_labels=10, hidden_size=32)).save_pretrained(
        tmp_path / "vit"
    )
    tiny_vit_config().to_json_file(tmp_path / "student.json")
    output, card = _run_study(
        tmp_path, fashion_root, "hf", 'arch = "hf/vit"\nfine_tune_epochs = 1', 'arch = "hf-config/student.json"'
    )
    assert "teacher feature layer: 'vit'" in output
    assert card["input"]["image_size"] == 28


@pytest.mark.slow
def test_the_readme_timm_example_runs_as_written(tmp_path, monkeypatch):
    """README's "timm and Hugging Face models" study, on a small image folder and a 5-class checkpoint of
    resnet18, made tiny only by --set (trials, epochs, seeds, data sizes)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## timm and Hugging Face models", 1)[1]
    study = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "parts.toml").write_text(study)
    monkeypatch.chdir(tmp_path)  # runs/parts/ is where the command runs, as in README
    make_class_folder(tmp_path / "data" / "parts", {"red": 14, "green": 14, "blue": 14})
    torch.save(build_model("timm/resnet18", 5, 3, 64, role="teacher").state_dict(), tmp_path / "teacher.pth")
    tiny = {
        "search.trials": "2",
        "student.epochs": "1",
        "final.seeds": "2",
        "final.baselines": '["scratch"]',
        "data.val_size": "6",
        "data.test_size": "6",
        "data.labeled": "0",
        "data.unlabeled": "10",
        "runtime.cache_dir": f'"{tmp_path / "cache"}"',
    }
    sets = [arg for key, value in tiny.items() for arg in ("--set", f"{key}={value}")]
    result = runner.invoke(app, ["run", "--spec", str(tmp_path / "parts.toml"), *sets])
    assert result.exit_code == 0, result.output
    assert "classifier head (fc) is for 5 classes; re-initialised" in result.output
    shipped = sorted((tmp_path / "runs" / "parts" / "students").glob("*/card.json"))  # one per method tried
    assert shipped and all((p.parent / "student.onnx").is_file() for p in shipped)
    card = json.loads(shipped[0].read_text())
    assert card["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406]) and card["input"]["std"] == pytest.approx(
        [0.229, 0.224, 0.225]
    )


def test_a_teacher_with_a_new_head_and_no_fine_tuning_is_refused_in_one_line(write_spec, tmp_path):
    torch.save(build_model("timm/resnet10t", 5, 1, 28, role="teacher").state_dict(), tmp_path / "t5.pt")
    spec = write_spec(epochs=1)
    sets = ["--set", 'teacher.arch="timm/resnet10t"', "--set", f'teacher.checkpoint="{tmp_path / "t5.pt"}"']
    result = runner.invoke(app, ["run", "--spec", str(spec), "--trials", "1", *sets, "--set", "data.image_size=32"])
    assert result.exit_code == 2, result.output
    assert "the teacher's classifier head (fc) was re-initialised for 10 classes" in result.output
    assert "set teacher.fine_tune_epochs" in result.output and "Traceback" not in result.output


def test_an_hf_students_config_and_weights_are_part_of_the_studys_identity(tmp_path):
    from kdsearch.nets.identity import code_identity

    tiny_vit_config().to_json_file(tmp_path / "s.json")
    spec = StudySpec(student={"arch": f"hf-config/{tmp_path / 's.json'}"})
    before = code_identity(spec)["student.arch"]["files"]
    tiny_vit_config(hidden_size=8).to_json_file(tmp_path / "s.json")
    assert code_identity(spec)["student.arch"]["files"] != before  # a resume with another config is refused
