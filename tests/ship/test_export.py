"""Export: a trained student becomes safetensors, TorchScript and ONNX files that give its logits, plus a card."""

from __future__ import annotations

import json
import os
import stat

import onnx
import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

from kdsearch.errors import KdsearchError
from kdsearch.ship import export as export_module
from kdsearch.ship.export import FILE_NAMES, export_student, load_safetensors_into, onnx_logits

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


class SmallCNN(nn.Module):
    """conv-bn-relu-pool-linear on 1×28×28, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(8 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class CumMax(nn.Module):
    """A head using ``torch.cummax``, which neither ONNX exporter of torch 2.14 maps (tracing it works)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(1 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(self.head(torch.flatten(x, 1)), 1).values


class Erfcx(CumMax):
    """A head using ``torch.special.erfcx``: only the dynamo exporter maps it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erfcx(self.head(torch.flatten(x, 1)))


def repeat_gray(module: nn.Module, args: tuple) -> tuple | None:
    """kdsearch's pre-hook for torchvision models fed 1-channel images."""
    x = args[0]
    return (x.expand(-1, 3, -1, -1),) if x.shape[1] == 1 else None


def trained_small_cnn() -> SmallCNN:
    """A SmallCNN after a few random SGD steps, so BatchNorm's running stats are not the defaults."""
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        x, y = torch.randn(16, 1, 28, 28) * 2 + 0.5, torch.randint(0, 10, (16,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.to(memory_format=torch.channels_last)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_exported_files_give_the_students_logits_and_the_card_describes_them(tmp_path):
    model = trained_small_cnn()
    assert not torch.equal(model.features[1].running_mean, torch.zeros(8))
    x = torch.randn(16, 1, 28, 28)
    card = {
        "architecture": "SmallCNN",
        "class_names": [str(i) for i in range(10)],
        "seed": 3,
        "params": {"T": 4.0, "alpha": 0.5},
        "test": {"accuracy": 0.9, "auc": 0.99},
    }

    exported = export_student(model, tmp_path / "student", sample=x[:2], card=card, check_inputs=x)

    assert model.training and model.features[0].weight.is_contiguous(memory_format=torch.channels_last)  # untouched
    want = logits(model, x)
    folder = tmp_path / "student"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILE_NAMES.values())  # no temporary files left
    assert exported.files == {kind: folder / name for kind, name in FILE_NAMES.items()} and not exported.errors

    fresh = load_safetensors_into(SmallCNN(), exported.files["safetensors"])
    assert torch.equal(logits(fresh, x), want)
    assert "features.1.running_var" in safetensors.torch.load_file(exported.files["safetensors"])
    with safetensors.safe_open(exported.files["safetensors"], "pt") as f:
        assert f.metadata()["architecture"] == "SmallCNN"

    scripted = torch.jit.load(str(exported.files["torchscript"]))
    assert (logits(scripted, x) - want).abs().max() <= 1e-5
    for n in (1, 7):  # not the traced batch size: the batch axis is dynamic
        assert (onnx_logits(exported.files["onnx"], x[:n]) - want[:n]).abs().max() <= 1e-4
    assert exported.onnx_max_abs_diff <= 1e-4

    written = json.loads(exported.files["card"].read_text())
    assert {k: written[k] for k in card} == card
    assert written == exported.card
    for kind in ("safetensors", "torchscript", "onnx"):
        assert written["files"][kind] == {"name": FILE_NAMES[kind], "bytes": exported.files[kind].stat().st_size}
    assert written["parameters"] == sum(p.numel() for p in model.parameters())
    assert written["checks"]["onnx_max_abs_diff"] <= 1e-4 and written["onnx_opset"] >= 17
    assert written["errors"] == {} and written["onnx_exporter"] == "torchscript"
    assert set(written["load"]) >= {"safetensors", "torchscript", "onnx"}
    assert onnx.load(str(exported.files["onnx"])).opset_import[0].version >= 17


@pytest.mark.slow
def test_torchvision_students_export_including_the_gray_to_rgb_pre_hook(tmp_path):
    torch.manual_seed(0)
    mobilenet = torchvision.models.mobilenet_v2(weights=None, num_classes=3)
    resnet = torchvision.models.resnet18(weights=None, num_classes=2)
    resnet.register_forward_pre_hook(repeat_gray)
    for name, model, channels in (("mobilenet_v2", mobilenet, 3), ("resnet18", resnet, 1)):
        x = torch.randn(5, channels, 32, 32)
        exported = export_student(model, tmp_path / name, sample=x[:2], card={"architecture": name}, check_inputs=x)
        assert exported.onnx_max_abs_diff <= 1e-4 and exported.torchscript_max_abs_diff <= 1e-4, name
        graph_input = onnx.load(str(exported.files["onnx"])).graph.input[0]
        assert graph_input.name == "input"
        assert graph_input.type.tensor_type.shape.dim[1].dim_value == channels  # the hook is inside the graph
        assert (onnx_logits(exported.files["onnx"], x[:3]) - logits(model, x[:3])).abs().max() <= 1e-4


def test_an_onnx_file_that_disagrees_with_pytorch_is_refused_naming_the_difference(tmp_path, monkeypatch):
    real_runner = export_module._onnx_runner

    def off_by_a_bit(path):
        run = real_runner(path)
        return lambda x: run(x) + 1e-3

    monkeypatch.setattr(export_module, "_onnx_runner", off_by_a_bit)
    x = torch.randn(4, 1, 28, 28)
    with pytest.raises(KdsearchError, match=r"student\.onnx \(its logits differ from PyTorch's by up to 1\.0\de-03"):
        export_student(trained_small_cnn(), tmp_path, sample=x[:2], card={}, check_inputs=x)
    assert not (tmp_path / "student.onnx").exists()  # only checked files get their final name
    assert (tmp_path / "student.safetensors").is_file() and (tmp_path / "student.torchscript.pt").is_file()
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["files"]["onnx"] is None and "differ" in card["errors"]["onnx"]


@pytest.mark.slow
def test_an_op_onnx_cannot_export_still_leaves_weights_torchscript_and_card(tmp_path):
    x = torch.randn(3, 1, 28, 28)
    export_student(SmallCNN(), tmp_path, sample=x, card={})  # an earlier export in the same folder
    with pytest.raises(
        KdsearchError,
        match=r"could not write student\.onnx \(.*cummax.*student\.safetensors, "
        r"student\.torchscript\.pt, card\.json",
    ):
        export_student(CumMax(), tmp_path, sample=x, card={"architecture": "CumMax"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json", "student.safetensors", "student.torchscript.pt"]
    scripted = torch.jit.load(str(tmp_path / "student.torchscript.pt"))
    assert scripted(x).shape == (3, 10)
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["files"]["onnx"] is None and "cummax" in card["errors"]["onnx"]
    assert card["architecture"] == "CumMax" and card["checks"]["onnx_max_abs_diff"] is None

    exported = export_student(CumMax(), tmp_path / "lenient", sample=x, card={}, strict=False)
    assert set(exported.files) == {"safetensors", "torchscript", "card"} and "onnx" in exported.errors


@pytest.mark.slow
def test_an_op_only_the_dynamo_exporter_maps_is_exported_by_it_into_one_file(tmp_path):
    x = torch.randn(3, 1, 28, 28)
    exported = export_student(Erfcx(), tmp_path, sample=x, card={})
    assert exported.card["onnx_exporter"] == "dynamo" and exported.onnx_max_abs_diff <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILE_NAMES.values())  # no student.onnx.data


def test_a_model_that_fails_on_the_sample_is_a_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(KdsearchError, match=r"fails on the input of shape \(2, 3, 28, 28\)"):
        export_student(SmallCNN(), tmp_path / "out", sample=torch.randn(2, 3, 28, 28), card={})
    assert not (tmp_path / "out").exists()


def test_every_exported_file_has_the_permissions_of_a_plain_file(tmp_path):
    """safetensors writes 0600 files; a folder copied to a server must be readable like the others (0644 here)."""
    x = torch.randn(4, 1, 28, 28)
    old = os.umask(0o022)
    try:
        exported = export_student(SmallCNN(), tmp_path / "student", sample=x[:2], card={}, check_inputs=x)
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in exported.files.values()}
    assert set(modes) == {"student.safetensors", "student.torchscript.pt", "student.onnx", "card.json"}
    assert set(modes.values()) == {stat.S_IMODE(plain.stat().st_mode)} == {0o644}, modes
