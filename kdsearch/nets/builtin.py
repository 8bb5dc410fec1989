"""The model registry (``MODELS``: ``name → builder(num_classes, in_channels, image_size, **arch_args)``) and its
built-in architectures: the seeds' small networks (each with a ``width`` channel multiplier) and torchvision's,
never pretrained here (weights come from a checkpoint file).

Adding an architecture is one decorated function, registered with the module path of the layer whose output
feature-based methods (cosine, hint) read by default, plus its line in ``kdsearch/config/catalog.py`` (name and
feature layer), which validates specs without torch; this module refuses to import while the two differ.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..config.catalog import MODEL_CATALOG, TORCHVISION_MODELS, check_catalog
from ..errors import KdsearchError
from ..registry import Registry

ModelBuilder = Callable[..., nn.Module]  # (num_classes, in_channels, image_size, **arch_args)
MODELS: Registry[ModelBuilder] = Registry("model")


def _flat_features(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Size of the flattened output of ``features`` for one image (a dry run on zeros)."""
    try:
        with torch.no_grad():
            return int(features(torch.zeros(1, in_channels, image_size, image_size)).flatten(1).shape[1])
    except RuntimeError as err:
        raise KdsearchError(
            f"this architecture cannot take {image_size}x{image_size} images ({str(err).splitlines()[0]}); "
            "use larger images (data.image_size) or another architecture"
        ) from None


class ConvClassifier(nn.Module):
    """``features`` → flatten → ``classifier``; the flattened features are the hidden representation."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def scaled(channels: int, width: float) -> int:
    """``channels`` times the channel multiplier ``width`` (``arch_args = { width = 0.5 }``), rounded, at least 1."""
    if not width > 0:
        raise KdsearchError(f"arch_args width = {width!r}: the channel multiplier must be a number > 0")
    return max(1, round(channels * width))


def conv_classifier(
    shape: tuple[int, int, int],
    layers: Sequence[int | str],
    *,
    hidden: int,
    dropout: float,
    width: float = 1.0,
    batch_norm: bool = False,
) -> ConvClassifier:
    """A VGG-style net for ``shape`` = (num_classes, in_channels, image_size): each int of ``layers`` a 3x3 conv
    of that many channels (then BatchNorm when ``batch_norm``) and ReLU, each ``"M"`` a 2x2 max-pool; then FC
    ``hidden`` with ReLU and dropout, and the logits; every width times the multiplier ``width``."""
    num_classes, in_channels, image_size = shape
    hidden = scaled(hidden, width)
    modules: list[nn.Module] = []
    channels = in_channels
    for layer in layers:
        if layer == "M":
            modules.append(nn.MaxPool2d(2))
            continue
        out = scaled(int(layer), width)
        modules.append(nn.Conv2d(channels, out, 3, padding=1))
        if batch_norm:
            modules.append(nn.BatchNorm2d(out))
        modules.append(nn.ReLU(inplace=True))
        channels = out
    features = nn.Sequential(*modules)
    flat = _flat_features(features, in_channels, image_size)
    classifier = nn.Sequential(
        nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
    )
    return ConvClassifier(features, classifier)


@MODELS.register("bn_cnn", feature_layer="features")
def bn_cnn(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    """A 422k-parameter teacher on 28x28: conv32-BN-pool, conv64-BN-pool, FC128 (every width times ``width``)."""
    shape = (num_classes, in_channels, image_size)
    return conv_classifier(shape, [32, "M", 64, "M"], hidden=128, dropout=0.2, width=width, batch_norm=True)


@MODELS.register("deep_nn", feature_layer="features")
def deep_nn(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    """Seed 004's teacher (DeepNN): four 3x3 convs (128, 64, 64, 32), two pools, FC512 (times ``width``)."""
    shape = (num_classes, in_channels, image_size)
    return conv_classifier(shape, [128, 64, "M", 64, 32, "M"], hidden=512, dropout=0.1, width=width)


@MODELS.register("light_nn", feature_layer="features")
def light_nn(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    """Seed 004's student (LightNN): two 3x3 convs of 16 filters, two pools, FC256 (206k params on 28x28x1);
    ``width`` scales every width (0.25: 13k params, 2: 810k)."""
    return conv_classifier(
        (num_classes, in_channels, image_size), [16, "M", 16, "M"], hidden=256, dropout=0.1, width=width
    )


# --- the seeds' small networks -------------------------------------------------------------


def _keras_mnist(
    widths: tuple[int, int], num_classes: int, in_channels: int, image_size: int, width: float = 1.0
) -> nn.Module:
    """The Keras KD example's shape: conv(w1)/2, LeakyReLU, max-pool/1, conv(w2)/2, dense (widths times ``width``)."""
    w1, w2 = (scaled(w, width) for w in widths)
    features = nn.Sequential(
        nn.Conv2d(in_channels, w1, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.MaxPool2d(2, stride=1, padding=1),
        nn.Conv2d(w1, w2, 3, stride=2, padding=1),
    )
    return ConvClassifier(features, nn.Linear(_flat_features(features, in_channels, image_size), num_classes))


@MODELS.register("keras_mnist_teacher", feature_layer="features")
def keras_mnist_teacher(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    """Seed 003's teacher (Keras KD example): conv256/2, LeakyReLU, max-pool/1, conv512/2, dense."""
    return _keras_mnist((256, 512), num_classes, in_channels, image_size, width)


@MODELS.register("keras_mnist_student", feature_layer="features")
def keras_mnist_student(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    """Seed 003's student: conv16/2, LeakyReLU, max-pool/1, conv32/2, dense."""
    return _keras_mnist((16, 32), num_classes, in_channels, image_size, width)


@MODELS.register("cnn_big", feature_layer="features")
def cnn_big(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Seed 000's teacher: conv32, conv64, dropout, conv64, conv128 (each 3x3 + 2x2 pool), dropout, FC512."""
    layers: list[nn.Module] = []
    channels = in_channels
    for i, width in enumerate((32, 64, 64, 128)):
        layers += [nn.Conv2d(channels, width, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        if i == 1:
            layers.append(nn.Dropout(0.2))
        channels = width
    features = nn.Sequential(*layers, nn.Dropout(0.5))
    flat = _flat_features(features, in_channels, image_size)
    return ConvClassifier(
        features, nn.Sequential(nn.Linear(flat, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes))
    )


@MODELS.register("cnn_small", feature_layer="features")
def cnn_small(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    """Seed 000's student: one 3x3 conv32 (times ``width``) + 2x2 pool, then a dense layer."""
    features = nn.Sequential(nn.Conv2d(in_channels, scaled(32, width), 3), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    return ConvClassifier(features, nn.Linear(_flat_features(features, in_channels, image_size), num_classes))


@MODELS.register("conv3_student", feature_layer="features")
def conv3_student(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    """Seed 001's student: conv16 5x5/2, conv32 5x5/2, conv64 3x3 (each + 2x2 pool; times ``width``), FC250, FC50."""
    c1, c2, c3 = scaled(16, width), scaled(32, width), scaled(64, width)
    features = nn.Sequential(
        nn.Conv2d(in_channels, c1, 5, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )
    flat = _flat_features(features, in_channels, image_size)
    classifier = nn.Sequential(
        nn.Linear(flat, 250),
        nn.ReLU(inplace=True),
        nn.Linear(250, 50),
        nn.ReLU(inplace=True),
        nn.Linear(50, num_classes),
    )
    return ConvClassifier(features, classifier)


# --- torchvision architectures (never pretrained here: weights come from a checkpoint file) ---


def _repeat_gray(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: feed a 1-channel batch to a 3-channel network by repeating the channel."""
    x = args[0]
    return (x.expand(-1, 3, -1, -1),) if x.shape[1] == 1 else None


def _torchvision(name: str, feature_layer: str) -> ModelBuilder:
    def build(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if in_channels == 1:
            model.register_forward_pre_hook(_repeat_gray)
        return model

    build.__name__ = name
    build.__doc__ = f"torchvision {name} (weights=None; 1-channel input repeated to 3; head sized to num_classes)."
    MODELS.register(name, feature_layer=feature_layer)(build)
    return build


for _name, _layer in TORCHVISION_MODELS.items():
    _torchvision(_name, _layer)

check_catalog(MODELS, MODEL_CATALOG, lambda name: MODELS.meta(name).get("feature_layer", ""))
