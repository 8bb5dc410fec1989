"""Models: the registry builds every architecture offline, checkpoints load strictly."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from kdsearch.errors import KdsearchError
from kdsearch.nets.models import (
    MODELS,
    FeatureTap,
    build_model,
    default_feature_layer,
    load_checkpoint,
    read_checkpoint,
)

SMALL = [
    "bn_cnn",
    "light_nn",
    "deep_nn",
    "keras_mnist_teacher",
    "keras_mnist_student",
    "cnn_big",
    "cnn_small",
    "conv3_student",
]
TORCHVISION = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121"]


@pytest.mark.parametrize("name", SMALL + TORCHVISION)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_architecture_builds_offline_with_the_class_count(name, channels):
    size = 64 if name in TORCHVISION or name in ("cnn_big", "conv3_student") else 28
    model = build_model(name, 7, channels, size).eval()
    tap = FeatureTap(model, default_feature_layer(name), role="teacher")
    with torch.no_grad():
        logits = model(torch.randn(2, channels, size, size))
    assert logits.shape == (2, 7)
    assert tap.output is not None and tap.output.shape[0] == 2


def test_too_small_images_are_a_clear_error():
    with pytest.raises(KdsearchError, match="cannot take 28x28 images"):
        build_model("conv3_student", 10, 3, 28)


def test_registry_lists_by_pattern_and_names_unknown_models():
    assert "resnet18" in MODELS.names("resnet*") and "light_nn" not in MODELS.names("resnet*")
    with pytest.raises(KdsearchError, match="unknown model 'vgg99'; known models: .*light_nn"):
        MODELS.get("vgg99")


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x))


def test_checkpoint_round_trip_state_dict_wrapped_and_torchscript(tmp_path):
    torch.manual_seed(0)
    trained = build_model("light_nn", 10, 1, 28)
    x = torch.randn(3, 1, 28, 28)
    plain, wrapped, scripted = tmp_path / "plain.pt", tmp_path / "wrapped.pt", tmp_path / "scripted.pt"
    torch.save(trained.state_dict(), plain)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, wrapped)
    torch.jit.script(trained).save(str(scripted))
    for path in (plain, wrapped, scripted):
        fresh = load_checkpoint(build_model("light_nn", 10, 1, 28), path, role="teacher", arch="light_nn")
        assert _same_outputs(fresh, trained, x), path.name


def test_checkpoint_mismatch_shows_the_first_keys(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(build_model("resnet18", 1000, 3, 32).state_dict(), path)
    with pytest.raises(
        KdsearchError, match=r"does not fit teacher.arch = 'resnet18' \(shape \(file vs model\): fc.weight"
    ):
        load_checkpoint(build_model("resnet18", 10, 3, 32), path, role="teacher", arch="resnet18")
    with pytest.raises(KdsearchError, match=r"checkpoint_ignore = \['fc\.'\]"):  # the hint names the model's own head
        load_checkpoint(build_model("resnet18", 10, 3, 32), path, role="teacher", arch="resnet18")
    with pytest.raises(KdsearchError, match="missing: .*unexpected: "):
        load_checkpoint(build_model("light_nn", 10, 1, 28), path, role="teacher", arch="light_nn")
    with pytest.raises(KdsearchError, match=r"checkpoint_ignore = \['classifier\.3\.'\]"):
        load_checkpoint(build_model("light_nn", 10, 1, 28), path, role="teacher", arch="light_nn")
    # a replaced head is skipped on request: an ImageNet-style checkpoint into a 10-class model
    model = load_checkpoint(build_model("resnet18", 10, 3, 32), path, role="teacher", arch="resnet18", ignore=("fc.",))
    assert model.fc.out_features == 10


def test_corrupt_or_missing_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(256))
    with pytest.raises(KdsearchError, match="neither a PyTorch state_dict nor a TorchScript file"):
        read_checkpoint(bad, role="student")
    with pytest.raises(KdsearchError, match="student.checkpoint .* not found"):
        read_checkpoint(tmp_path / "nope.pt", role="student")


def test_a_handed_teacher_with_batchnorm_has_a_stable_fingerprint():
    """A handed-over teacher's weights are part of its teacher key; BatchNorm's 0-dim counter hashes too."""
    from kdsearch.nets.models import code_fingerprint, given_models

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    with given_models(teacher=teacher):
        first = code_fingerprint("python", "teacher")
        assert code_fingerprint("python", "teacher") == first and len(first) == 16
    with torch.no_grad():
        teacher[0].weight.add_(1.0)
    with given_models(teacher=teacher):
        assert code_fingerprint("python", "teacher") != first  # other weights, another teacher key
