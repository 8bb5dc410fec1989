"""Model registry: ``name → builder(num_classes, in_channels, image_size) -> nn.Module``.

Adding an architecture is one decorated function. Builders never download weights.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .registry import Registry

ModelBuilder = Callable[[int, int, int], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")


def _flat_features(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Size of the flattened output of ``features`` for one image (a dry run on zeros)."""
    with torch.no_grad():
        return int(features(torch.zeros(1, in_channels, image_size, image_size)).flatten(1).shape[1])


class ConvClassifier(nn.Module):
    """``features`` → flatten → ``classifier``; the flattened features are the hidden representation."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@MODELS.register("bn_cnn")
def bn_cnn(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A 422k-parameter teacher on 28x28: conv32-BN-pool, conv64-BN-pool, FC128."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )  # fmt: skip
    flat = _flat_features(features, in_channels, image_size)
    classifier = nn.Sequential(nn.Linear(flat, 128), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(128, num_classes))
    return ConvClassifier(features, classifier)


@MODELS.register("deep_nn")
def deep_nn(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Seed 004's teacher (DeepNN): four 3x3 convs (128, 64, 64, 32), two pools, FC512."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 128, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )  # fmt: skip
    flat = _flat_features(features, in_channels, image_size)
    classifier = nn.Sequential(nn.Linear(flat, 512), nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Linear(512, num_classes))
    return ConvClassifier(features, classifier)


@MODELS.register("light_nn")
def light_nn(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Seed 004's student (LightNN): two 3x3 convs of 16 filters, two pools, FC256 (206k params on 28x28x1)."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )  # fmt: skip
    flat = _flat_features(features, in_channels, image_size)
    classifier = nn.Sequential(nn.Linear(flat, 256), nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Linear(256, num_classes))
    return ConvClassifier(features, classifier)


def build_model(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A fresh, randomly initialised instance of the registered architecture ``name``."""
    return MODELS.get(name)(num_classes, in_channels, image_size)

