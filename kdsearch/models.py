"""Model registry: ``name → builder(num_classes, in_channels, image_size) -> nn.Module``.

Adding an architecture is one decorated function, registered with the module path of the
layer whose output feature-based methods (cosine, hint) read by default. Features are read
with forward hooks (``FeatureTap``), so no model class is edited to expose them. Builders
never download weights.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import KdsearchError
from .registry import Registry

ModelBuilder = Callable[[int, int, int], nn.Module]
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


@MODELS.register("bn_cnn", feature_layer="features")
def bn_cnn(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A 422k-parameter teacher on 28x28: conv32-BN-pool, conv64-BN-pool, FC128."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )  # fmt: skip
    flat = _flat_features(features, in_channels, image_size)
    classifier = nn.Sequential(nn.Linear(flat, 128), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(128, num_classes))
    return ConvClassifier(features, classifier)


@MODELS.register("deep_nn", feature_layer="features")
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


@MODELS.register("light_nn", feature_layer="features")
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



def default_feature_layer(name: str) -> str:
    """The module path a feature-based method taps on architecture ``name`` unless the spec says otherwise."""
    return MODELS.meta(name).get("feature_layer", "")


class FeatureTap:
    """Keeps the latest output of one submodule (by dotted path) through a forward hook.

    Example::

        tap = FeatureTap(model, "features", role="student")
        logits = model(x)
        tap.output  # the output of model.features for x
        tap.remove()
    """

    def __init__(self, model: nn.Module, path: str, *, role: str = "model") -> None:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            names = [n for n, _ in model.named_children()]
            raise KdsearchError(
                f"{role}.feature_layer {path!r} is not a module of the {role}; its top-level modules are "
                f"{', '.join(names)} (use a dotted path such as 'features' or 'layer4.1')"
            ) from None
        self.output: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.output = output

    def remove(self) -> None:
        self._handle.remove()


# --- the seeds' small networks -------------------------------------------------------------


def _keras_mnist(widths: tuple[int, int], num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """The Keras KD example's shape: conv(w1)/2, LeakyReLU, max-pool/1, conv(w2)/2, dense."""
    w1, w2 = widths
    features = nn.Sequential(
        nn.Conv2d(in_channels, w1, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.MaxPool2d(2, stride=1, padding=1), nn.Conv2d(w1, w2, 3, stride=2, padding=1),
    )  # fmt: skip
    return ConvClassifier(features, nn.Linear(_flat_features(features, in_channels, image_size), num_classes))


@MODELS.register("keras_mnist_teacher", feature_layer="features")
def keras_mnist_teacher(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Seed 003's teacher (Keras KD example): conv256/2, LeakyReLU, max-pool/1, conv512/2, dense."""
    return _keras_mnist((256, 512), num_classes, in_channels, image_size)


@MODELS.register("keras_mnist_student", feature_layer="features")
def keras_mnist_student(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Seed 003's student: conv16/2, LeakyReLU, max-pool/1, conv32/2, dense."""
    return _keras_mnist((16, 32), num_classes, in_channels, image_size)


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
    return ConvClassifier(features, nn.Sequential(nn.Linear(flat, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes)))


@MODELS.register("cnn_small", feature_layer="features")
def cnn_small(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Seed 000's student: one 3x3 conv32 + 2x2 pool, then a dense layer."""
    features = nn.Sequential(nn.Conv2d(in_channels, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    return ConvClassifier(features, nn.Linear(_flat_features(features, in_channels, image_size), num_classes))


@MODELS.register("conv3_student", feature_layer="features")
def conv3_student(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Seed 001's student: conv16 5x5/2, conv32 5x5/2, conv64 3x3 (each + 2x2 pool), FC250, FC50."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, stride=2, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, stride=2, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )  # fmt: skip
    flat = _flat_features(features, in_channels, image_size)
    classifier = nn.Sequential(nn.Linear(flat, 250), nn.ReLU(inplace=True), nn.Linear(250, 50), nn.ReLU(inplace=True),
                               nn.Linear(50, num_classes))  # fmt: skip
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


for _name, _layer in {
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
    "densenet121": "features",
    "mobilenet_v2": "features",
    "mobilenet_v3_small": "features",
    "efficientnet_b0": "features",
}.items():
    _torchvision(_name, _layer)


# --- checkpoints -------------------------------------------------------------------------------


def read_checkpoint(path: Path, *, role: str) -> dict[str, torch.Tensor]:
    """A state_dict from a checkpoint file: a (wrapped) state_dict or a TorchScript module."""
    if not path.is_file():
        raise KdsearchError(f"{role}.checkpoint {path} not found; point it at a .pt file (state_dict or TorchScript)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream but users still have such files
                warnings.simplefilter("ignore")
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:
            raise KdsearchError(
                f"{role}.checkpoint {path} is neither a PyTorch state_dict nor a TorchScript file (corrupt, another "
                "format, or a whole pickled model from torch.save(model), which is not loaded since unpickling can run "
                "code); save it with torch.save(model.state_dict(), path)"
            ) from None
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise KdsearchError(f"{role}.checkpoint {path} holds no state_dict of tensors; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(model: nn.Module, path: Path, *, role: str, arch: str, ignore: tuple[str, ...] = ()) -> nn.Module:
    """Load a checkpoint into ``model`` strictly (keys and shapes), skipping keys that start with ``ignore``.

    A mismatch is a KdsearchError that shows the first missing, unexpected and mis-shaped keys.
    """
    return load_state(model, read_checkpoint(Path(path), role=role), role=role, arch=arch, ignore=ignore, source=path)


def load_state(
    model: nn.Module, state: dict[str, torch.Tensor], *, role: str, arch: str, ignore: tuple[str, ...] = (),
    source: object = "the checkpoint",
) -> nn.Module:  # fmt: skip
    """``load_checkpoint`` for a state_dict already read (e.g. once per study rather than per trial)."""
    path = source
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", shapes)):
            if items:
                more = f" and {len(items) - 5} more" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        head = next(reversed([k for k, v in own.items() if v.dim() == 2]), "fc.weight")  # the last linear layer
        head = head.rsplit(".", 1)[0] + "."
        raise KdsearchError(
            f"{role}.checkpoint {path} does not fit {role}.arch = {arch!r} ({'; '.join(parts)}). Check the "
            f"architecture and class count, or skip a replaced head with {role}.checkpoint_ignore = [{head!r}]"
        )
    model.load_state_dict(state, strict=not ignore)
    return model
