"""Models: the registry's (``builtin.py``), the user's own, whole-model files, feature taps and checkpoints.

An ``arch`` is resolved by ``build_model``: a registry name; ``package.module:callable`` (the
user's code, called with whichever of ``num_classes``, ``in_channels``, ``image_size`` it accepts
plus ``arch_args``); ``torchscript`` / ``exported`` (a whole teacher read from its checkpoint
file); or ``python`` (an object handed to the Python API, see ``given_models``).

A registry model's feature layer is the one it was registered with (``builtin.py``); for other
models the default is the module just before the last ``nn.Linear`` (``default_feature_layer``).
Features are read with forward hooks (``FeatureTap``), so no model class is edited to expose
them. Builders never download weights.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from ..errors import KdsearchError, first_line
from .builtin import MODELS
from .imports import import_object
from .outputs import HIDDEN_STATE, adapt_outputs, first_tensor, hidden_state

FORWARD_FEATURES = "forward_features"  # feature_layer naming what a model's forward_features() returns (timm)


_GIVEN: dict[str, Callable[[], nn.Module]] = {}  # role → builder of the object handed to the Python API


@contextlib.contextmanager
def given_models(
    *, teacher: nn.Module | None = None, student: Callable[..., nn.Module] | None = None
) -> Iterator[None]:
    """While open, ``arch = "python"`` builds these: a copy of the ``teacher`` module (used as is, the
    caller's object is never changed) and a fresh ``student()`` per call (a factory or class)."""
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise KdsearchError(f"teacher= must be a torch.nn.Module (got a {type(teacher).__name__})")
    if student is not None and (isinstance(student, nn.Module) or not callable(student)):
        raise KdsearchError(
            "student= must be a factory that builds a fresh model, e.g. student=lambda: MyStudent(width=32) or "
            "student=MyStudent, so every trial starts from its own initialisation"
        )
    before = dict(_GIVEN)
    if teacher is not None:
        _GIVEN["teacher"] = lambda: copy.deepcopy(teacher)
    if student is not None:
        _GIVEN["student"] = student
    try:
        yield
    finally:
        _GIVEN.clear()
        _GIVEN.update(before)


def is_handed(role: str) -> bool:
    """Whether an object for ``role`` was handed to the Python API (``given_models`` is open with one)."""
    return role in _GIVEN


def shape_keywords(builder: Callable[..., Any], shape: Mapping[str, int]) -> dict[str, int]:
    """The shape keywords (``num_classes``, ``in_channels``, ``image_size``) that ``builder``'s signature names:
    a ``**kwargs`` alone does not take them (timm's models pass it on and reject ``in_channels``)."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # no signature (some builtins): pass the user's arguments only
        return {}
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL, p.POSITIONAL_ONLY)}
    return {k: v for k, v in shape.items() if k in named}


def _call_builder(
    builder: Callable[..., Any], what: str, shape: dict[str, int], args: Mapping[str, Any], *, field: str = ""
) -> nn.Module:
    """``builder(**the shape keywords its signature names, **args)`` (``args`` win), checked to return an
    nn.Module; a keyword it rejects gets a line listing what kdsearch passed and how to change it."""
    kwargs = {**shape_keywords(builder, shape), **args}
    try:
        model = builder(**kwargs)
    except KdsearchError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's constructor may raise anything
        hint = ""
        if isinstance(err, TypeError) and "keyword" in str(err):
            passed = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "none"
            hint = (
                f" (kdsearch passed: {passed}; shape keywords go only to parameters the signature names; set or "
                f"rename them in {field or 'arch_args'}, e.g. {{ in_chans = 3 }})"
            )
        raise KdsearchError(f"{what} raised {type(err).__name__}: {first_line(err)}{hint}") from None
    if not isinstance(model, nn.Module):
        raise KdsearchError(f"{what} returned {type(model).__name__!r}, not a torch.nn.Module; return the model")
    return adapt_outputs(model)


def load_whole_model(kind: str, path: Path, *, role: str = "teacher") -> nn.Module:
    """A whole model from a file: ``torchscript`` (``torch.jit.save``) or ``exported`` (``torch.export.save``, .pt2,
    unflattened so that its submodules keep their paths and forward hooks work)."""
    path = Path(path)
    if not path.is_file():
        raise KdsearchError(f"{role}.checkpoint {path} not found; point it at the {kind} file of the {role}")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but users still have such files
            warnings.simplefilter("ignore")
            if kind == "torchscript":
                return torch.jit.load(str(path), map_location="cpu")
            return torch.export.unflatten(torch.export.load(str(path)))
    except Exception as err:  # noqa: BLE001 - torch raises many types for foreign or damaged files
        how = (
            "torch.jit.save(torch.jit.script(model), path)"
            if kind == "torchscript"
            else "torch.export.save(torch.export.export(model, (x,)), path)"
        )
        raise KdsearchError(
            f"{role}.checkpoint {path} is not a readable {kind} file ({type(err).__name__}: {first_line(err)}); "
            f"save it with {how}"
        ) from None


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    args: Mapping[str, Any] | None = None,
    checkpoint: Path | str | None = None,
    pretrained: bool = False,
    role: str = "model",
) -> nn.Module:
    """A fresh instance of ``name``: a registry name, ``package.module:callable``, ``timm/…``, ``hf/…`` or
    ``hf-config/…`` (``nets.hub``; ``pretrained``: timm's weights), ``torchscript`` / ``exported`` (the whole
    model read from ``checkpoint``) or ``python`` (the object handed to the Python API for ``role``). Models
    that return a tuple, dict or ``ModelOutput`` are adapted to return their logits."""
    from ..config.spec import GIVEN_ARCH, WHOLE_MODEL_ARCHS, hub_kind, is_import_path

    shape = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    if name in MODELS:
        return MODELS.get(name)(num_classes, in_channels, image_size, **dict(args or {}))
    if hub_kind(name):
        from .hub import build_hub_model

        return build_hub_model(
            name, num_classes, in_channels, image_size, args=args or {}, pretrained=pretrained, role=role
        )
    if name in WHOLE_MODEL_ARCHS:
        if checkpoint is None:
            raise KdsearchError(f"{role}.arch = {name!r} reads the whole model from {role}.checkpoint; set it")
        return load_whole_model(name, Path(checkpoint), role=role)
    if name == GIVEN_ARCH:
        builder = _GIVEN.get(role)
        if builder is None:
            raise KdsearchError(
                f"{role}.arch = 'python' means a model handed to kdsearch.run_study({role}=...); from the command line "
                "give a known model or 'package.module:callable'"
            )
        return _call_builder(builder, f"the {role} factory handed to kdsearch.run_study", shape, {})
    if is_import_path(name):
        builder = import_object(name, field=f"{role}.arch")
        if not callable(builder):
            raise KdsearchError(f"{role}.arch = {name!r} names {type(builder).__name__!r}, not a class or function")
        return _call_builder(builder, f"{role}.arch = {name!r}", shape, args or {}, field=f"{role}.arch_args")
    return MODELS.get(name)(num_classes, in_channels, image_size)  # unknown: the registry's error lists the names


def code_fingerprint(name: str, role: str = "model") -> str:
    """What identifies the code behind ``name`` beyond its name: the hash of the user's module file for an
    import path, of the handed object's weights for ``python``; "" for registry names and whole-model files."""
    import hashlib

    from ..config.spec import GIVEN_ARCH, hub_kind, is_import_path

    if name == GIVEN_ARCH and role == "teacher" and _GIVEN.get(role) is not None:
        return state_dict_sha256(_GIVEN[role]().state_dict(), header=_fingerprint_header)[:16]
    if hub_kind(name):
        from .hub import hub_fingerprint

        return hub_fingerprint(name)
    if name in MODELS or not is_import_path(name):
        return ""
    builder = import_object(name, field=f"{role}.arch")
    try:
        source = inspect.getsourcefile(builder) or inspect.getsourcefile(inspect.getmodule(builder))  # type: ignore[arg-type]
        return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source else ""
    except (TypeError, OSError):
        return ""


def _weights_header(name: str, t: torch.Tensor) -> str:
    return f"{name}|{t.dtype}|{list(t.shape)}|"


def _fingerprint_header(name: str, t: torch.Tensor) -> str:
    return f"{name}\0{tuple(t.shape)}\0{t.dtype}\n"


def state_dict_sha256(
    state: Mapping[str, torch.Tensor], *, header: Callable[[str, torch.Tensor], str] = _weights_header
) -> str:
    """sha256 (hex) of a state_dict: names, dtypes, shapes and bytes, in name order (not pickle bytes), so the same
    weights give the same digest on every machine. ``header`` is how each tensor is introduced: the teacher's
    digest (recorded in studies) and a handed module's code fingerprint (in teacher keys) keep their own."""
    import hashlib

    h = hashlib.sha256()
    for name, value in sorted(state.items()):
        t = value.detach().cpu().contiguous()
        h.update(header(name, t).encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's values (on the CPU, in row-major order): what the digests hash."""
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def default_feature_layer(name: str, model: Callable[[], nn.Module] | None = None) -> str:
    """The module path a feature-based method taps unless the spec says otherwise: the registry's entry for a
    registered ``name``, ``forward_features`` for a timm model, else the module just before the last
    ``nn.Linear`` of ``model()`` (built only then)."""
    if name in MODELS:
        return MODELS.meta(name).get("feature_layer", "")
    if name.startswith("timm/"):
        return FORWARD_FEATURES
    return layer_before_last_linear(model()) if model is not None else ""


def layer_before_last_linear(model: nn.Module) -> str:
    """The dotted path of the sibling module just before the one holding ``model``'s last ``nn.Linear``
    (descending while that Linear sits in the first child); "" when there is none (e.g. no Linear)."""

    def is_linear(m: nn.Module) -> bool:  # an exported program's layers are plain modules holding the weights
        weight = dict(m.named_parameters(recurse=False)).get("weight")
        return isinstance(m, nn.Linear) or (weight is not None and weight.dim() == 2 and not list(m.children()))

    linears = [name for name, m in model.named_modules() if name and is_linear(m)]
    if not linears:
        return ""
    path = linears[-1].split(".")
    node, prefix = model, []
    for part in path:
        names = [n for n, _ in node.named_children()]
        if part not in names:
            return ""
        i = names.index(part)
        if i > 0:
            return ".".join(prefix + [names[i - 1]])
        node, prefix = getattr(node, part), prefix + [part]
    return ""


def check_model_output(
    model: nn.Module, *, role: str, arch: str, num_classes: int, in_channels: int, image_size: int
) -> None:
    """KdsearchError unless ``model`` maps 2 images of the data's shape to (2, num_classes) logits."""
    x = torch.zeros(2, in_channels, image_size, image_size)
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except KdsearchError as err:  # the logits adapter: an output it cannot read
        raise KdsearchError(f"{role}.arch = {arch!r} {err}") from None
    except Exception as err:  # noqa: BLE001 - the user's forward may raise anything
        raise KdsearchError(
            f"{role}.arch = {arch!r} fails on a batch of 2 images of {in_channels}×{image_size}×{image_size} "
            f"({type(err).__name__}: {first_line(err)}); check its input layer against data.channels/data.image_size"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise KdsearchError(
            f"{role}.arch = {arch!r} returns a {type(out).__name__}; kdsearch needs a tensor of logits (N, {num_classes})"
        )
    if tuple(out.shape) != (2, num_classes):
        raise KdsearchError(
            f"{role}.arch = {arch!r} gives outputs of shape {tuple(out.shape)} for 2 images; expected (N, {num_classes}) "
            f"logits for the {num_classes} classes (size its last layer with num_classes)"
        )


class FeatureTap:
    """Keeps the latest features of one layer of a model: a submodule's output (by dotted path, through a forward
    hook), what ``forward_features()`` returns (``"forward_features"``, timm's models) or one of a Hugging Face
    model's ``"hidden_states[i]"``. A non-tensor output is read as its first tensor (``outputs.first_tensor``).

    Example::

        tap = FeatureTap(model, "features", role="student")
        logits = model(x)
        tap.output  # the output of model.features for x
        tap.remove()
    """

    def __init__(self, model: nn.Module, path: str, *, role: str = "model") -> None:
        if isinstance(model, torch.jit.ScriptModule):
            raise KdsearchError(
                f"feature methods (cosine, hint) cannot read a layer of a TorchScript {role}: its layers run inside "
                f"the compiled graph. Save the {role} as a torch.export program ({role}.arch = 'exported', .pt2), "
                f"or give its class ({role}.arch = 'package.module:Class' with a state_dict checkpoint), or drop "
                "the feature methods from search.methods"
            )
        if not path:
            raise KdsearchError(
                f"the {role} has no nn.Linear to find a default feature layer by; set {role}.feature_layer to the "
                "dotted path of the module whose output feature methods read"
            )
        self.output: torch.Tensor | None = None
        self._undo: Callable[[], None]
        hidden = HIDDEN_STATE.match(path)
        if hidden:
            self._tap_hidden_state(model, int(hidden.group(1)), role)
        elif path == FORWARD_FEATURES and callable(getattr(model, FORWARD_FEATURES, None)):
            self._tap_forward_features(model)
        else:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                names = [n for n, _ in model.named_children()]
                raise KdsearchError(
                    f"{role}.feature_layer {path!r} is not a module of the {role}; its top-level modules are "
                    f"{', '.join(names)} (use a dotted path such as 'features' or 'layer4.1'"
                    + (", or 'forward_features'" if hasattr(model, FORWARD_FEATURES) else "")
                    + ")"
                ) from None
            self._undo = module.register_forward_hook(self._keep).remove

    def _keep(self, module: nn.Module, inputs: object, output: Any) -> None:
        self.output = first_tensor(output)

    def _tap_forward_features(self, model: nn.Module) -> None:
        """Wrap the instance's ``forward_features`` (forward calls it through ``self``), restored on remove."""
        original = model.forward_features

        def forward_features(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.output = first_tensor(out)
            return out

        model.forward_features = forward_features

        def undo() -> None:
            if model.__dict__.get(FORWARD_FEATURES) is forward_features:
                del model.__dict__[FORWARD_FEATURES]

        self._undo = undo

    def _tap_hidden_state(self, model: nn.Module, index: int, role: str) -> None:
        """A hook ahead of the logits adapter reads ``hidden_states[index]``; the model's config is set to
        return them while the tap is on."""
        config = getattr(model, "config", None)
        before = getattr(config, "output_hidden_states", None)
        if config is not None:
            config.output_hidden_states = True

        def keep(module: nn.Module, inputs: object, output: Any) -> None:
            self.output = hidden_state(output, index)

        handle = model.register_forward_hook(keep, prepend=True)

        def undo() -> None:
            handle.remove()
            if config is not None:
                config.output_hidden_states = before

        self._undo = undo

    def remove(self) -> None:
        self._undo()


# --- checkpoints -------------------------------------------------------------------------------


def read_checkpoint(path: Path, *, role: str) -> dict[str, torch.Tensor]:
    """A state_dict from a checkpoint: a (wrapped) state_dict or TorchScript file, a ``.safetensors`` file, or a
    hub-style folder holding ``model.safetensors`` or ``pytorch_model.bin`` (read with ``weights_only``)."""
    if path.is_dir():
        from .hub import WEIGHT_FILES, weights_file

        found = weights_file(path)
        if found is None:
            raise KdsearchError(
                f"{role}.checkpoint {path} is a folder without {' or '.join(WEIGHT_FILES)}; point it at the weights file"
            )
        path = found
    if not path.is_file():
        raise KdsearchError(
            f"{role}.checkpoint {path} not found; point it at a .pt file (state_dict or TorchScript), a .safetensors "
            "file or a folder holding model.safetensors"
        )
    if path.suffix == ".safetensors":
        import safetensors.torch

        try:
            return dict(safetensors.torch.load_file(str(path)))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own types for damaged files
            raise KdsearchError(
                f"{role}.checkpoint {path} is not a readable safetensors file ({first_line(err)}); save it with "
                "safetensors.torch.save_file(model.state_dict(), path)"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - unpickling raises many types for foreign or damaged files: try TorchScript
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream but users still have such files
                warnings.simplefilter("ignore")
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - neither format: one line below
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
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    role: str,
    arch: str,
    ignore: tuple[str, ...] = (),
    source: object = "the checkpoint",
) -> nn.Module:
    """``load_checkpoint`` for a state_dict already read (e.g. once per study rather than per trial)."""
    path = source
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore)}
    head = tuple(getattr(model, "_kdsearch_head", ()))  # a hub model's classifier: re-initialised when it differs
    other_head = [
        k for k, v in own.items() if k.startswith(head or ("\0",)) and k in state and state[k].shape != v.shape
    ]
    if head and other_head:
        classes = state[other_head[0]].shape[0] if state[other_head[0]].dim() else "?"
        from .hub import note_once

        note_once(
            f"{role}: {path}'s classifier head ({', '.join(h.rstrip('.') for h in head)}) is for {classes} classes; "
            f"re-initialised for this data's ({'teacher.fine_tune_epochs trains it' if role == 'teacher' else 'training trains it'})"
        )
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        own = {k: v for k, v in own.items() if not k.startswith(head)}
        ignore = (*ignore, *head)
        model._kdsearch_reinit_head = ", ".join(h.rstrip(".") for h in head)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
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
