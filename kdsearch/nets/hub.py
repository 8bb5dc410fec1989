"""Models users already have, by name: ``timm/<model name>`` (``timm.create_model``), ``hf/<folder>`` (a
Hugging Face ``save_pretrained`` folder) and ``hf-config/<folder or .json>`` (a fresh model from its config).

timm and transformers are optional extras: a study naming one without it installed gets the line saying which
to install. Pretrained weights never need a network here: ``pretrained = true`` reads timm's weights from the
local Hugging Face cache (downloading only when they are not there and the hub is reachable), and ``hf/``
folders load with ``local_files_only``. A pretrained classifier head of another class count is re-initialised
with one line saying so (``reinitialised_head`` tells the teacher's training to fine-tune it). Models come back
with ``outputs.adapt_outputs``, so a ``ModelOutput`` reads as logits.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Mapping

from torch import nn

from ..config.model_spec import HUB_PREFIXES, hub_kind
from ..errors import KdsearchError, first_line
from .identity import WEIGHT_FILES, hub_fingerprint, weights_file  # noqa: F401 - re-exported
from .outputs import adapt_outputs

log = logging.getLogger(__name__)
_NOTED: set[str] = set()
TIMM_FEATURE_LAYER = "forward_features"  # a timm model's default feature layer: what forward_features returns


def note_once(line: str) -> None:
    """Log ``line`` (a warning the CLI shows) the first time this process meets it: builds repeat per trial."""
    if line not in _NOTED:
        _NOTED.add(line)
        log.warning(line)


def require(module: str, arch: str) -> ModuleType:
    """``import module``, or the line naming the kdsearch extra to install for ``arch``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = HUB_PREFIXES[hub_kind(arch) or "timm/"][1]
        raise KdsearchError(
            f"arch {arch!r} needs {module}, which is not installed: pip install 'kdsearch[{extra}]'"
        ) from None


def build_hub_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    args: Mapping[str, Any],
    pretrained: bool = False,
    role: str = "model",
) -> nn.Module:
    """A model for ``arch`` (``timm/``, ``hf/`` or ``hf-config/``) sized for the data, its outputs read as logits."""
    kind = hub_kind(arch)
    rest = arch[len(kind or "") :]
    if kind == "timm/":
        model = _build_timm(rest, num_classes, in_channels, dict(args), pretrained, role, arch)
    elif kind in ("hf/", "hf-config/"):
        model = _build_hf(kind, Path(rest), num_classes, in_channels, image_size, dict(args), role, arch)
    else:
        raise KdsearchError(f"{role}.arch = {arch!r} is not a timm/, hf/ or hf-config/ arch")
    return adapt_outputs(model)


# --- timm -------------------------------------------------------------------------------------------------------


def _timm_name(timm: ModuleType, name: str, role: str, arch: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else "; timm.list_models() lists them"
        raise KdsearchError(f"{role}.arch = {arch!r}: timm {timm.__version__} has no model {name!r}{hint}")


def _timm_cfg(timm: ModuleType, name: str) -> Any:
    return timm.models.get_pretrained_cfg(name)


def _cached_timm_weights(cfg: Any) -> str | None:
    """The local Hugging Face cache's file of timm weights ``cfg`` names, or None when not cached."""
    from huggingface_hub import try_to_load_from_cache

    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        return None
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else list(WEIGHT_FILES)
    for filename in names:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _build_timm(
    name: str, num_classes: int, in_channels: int, args: dict, pretrained: bool, role: str, arch: str
) -> nn.Module:
    timm = require("timm", arch)
    _timm_name(timm, name, role, arch)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_channels, "pretrained": False}
    if pretrained:
        cfg = _timm_cfg(timm, name)
        cached = _cached_timm_weights(cfg) if cfg is not None else None
        if cached is None and (_offline() or cfg is None):
            where = os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface/hub"
            raise KdsearchError(
                f"{role}.pretrained: the weights of {arch} ({getattr(cfg, 'hf_hub_id', None) or 'none published'}) "
                f"are not in the Hugging Face cache ({where}) and the hub is offline; fetch them once where there is "
                f"internet (python -c \"import timm; timm.create_model('{name}', pretrained=True)\"), or give "
                f"{role}.checkpoint"
            )
        kwargs["pretrained"] = True
        if cached is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": cached}
        trained_for = getattr(cfg, "num_classes", None)
        if trained_for and trained_for != num_classes:
            note_once(
                f"{role}: {arch}'s pretrained head is for {trained_for} classes; re-initialised for {num_classes} "
                + ("(teacher.fine_tune_epochs trains it)" if role == "teacher" else "(training trains it)")
            )
    kwargs.update(args)  # the user's keywords beat kdsearch's
    try:
        model = timm.create_model(name, **kwargs)
    except KdsearchError:
        raise
    except Exception as err:  # noqa: BLE001 - timm and the hub raise many types (network, files, arguments)
        what = "downloading or reading its pretrained weights" if pretrained else "timm.create_model"
        raise KdsearchError(
            f"{role}.arch = {arch!r}: {what} raised {type(err).__name__}: {first_line(err)}"
            + (f"; give {role}.checkpoint instead, or run where the hub is reachable once" if pretrained else "")
        ) from None
    head = model.default_cfg.get("classifier") if isinstance(getattr(model, "default_cfg", None), dict) else None
    heads = [head] if isinstance(head, str) else list(head or [])
    model._kdsearch_head = tuple(f"{h}." for h in heads)
    if pretrained and getattr(_timm_cfg(timm, name), "num_classes", num_classes) != num_classes:
        model._kdsearch_reinit_head = ", ".join(heads) or "the classifier"
    return model


# --- Hugging Face transformers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """transformers' load reports, per-forward notices and progress bars off from the first hub build on: kdsearch
    says what matters in one line (errors still show)."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    yield


def _hf_config(transformers: ModuleType, path: Path, role: str, arch: str) -> Any:
    if path.is_dir():
        return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    if not path.is_file():
        raise KdsearchError(
            f"{role}.arch = {arch!r}: {path} not found; give a folder with config.json or a config .json file"
        )
    try:
        fields = json.loads(path.read_text())
        model_type = fields.pop("model_type")
    except (ValueError, KeyError, AttributeError, TypeError):
        raise KdsearchError(
            f"{role}.arch = {arch!r}: {path} is not a Hugging Face config (a JSON object with model_type, as "
            "config.save_pretrained writes)"
        ) from None
    return transformers.AutoConfig.for_model(model_type, **fields)


def _build_hf(
    kind: str, path: Path, num_classes: int, in_channels: int, image_size: int, args: dict, role: str, arch: str
) -> nn.Module:
    transformers = require("transformers", arch)
    path = path.expanduser()
    try:
        with _quiet(transformers):
            if kind == "hf/":
                if not (path / "config.json").is_file():
                    raise KdsearchError(
                        f"{role}.arch = {arch!r}: {path} is not a save_pretrained folder (no config.json); save "
                        "it with model.save_pretrained(folder)"
                    )
                config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
                trained_for = config.num_labels
                if trained_for != num_classes:
                    config.num_labels = num_classes
                model = transformers.AutoModelForImageClassification.from_pretrained(
                    str(path), config=config, ignore_mismatched_sizes=True, local_files_only=True, **args
                )
                if trained_for != num_classes:
                    note_once(
                        f"{role}: {path.name}'s head is for {trained_for} classes; re-initialised for {num_classes} "
                        + ("(teacher.fine_tune_epochs trains it)" if role == "teacher" else "(training trains it)")
                    )
                    model._kdsearch_reinit_head = "classifier"
            else:
                config = _hf_config(transformers, path, role, arch)
                for field, value in {"num_channels": in_channels, "image_size": image_size}.items():
                    if hasattr(config, field) and field not in args:
                        setattr(config, field, value)
                for field, value in args.items():
                    setattr(config, field, value)
                config.num_labels = num_classes
                model = transformers.AutoModelForImageClassification.from_config(config)
    except KdsearchError:
        raise
    except Exception as err:  # noqa: BLE001 - transformers raises many types for foreign folders and configs
        raise KdsearchError(
            f"{role}.arch = {arch!r}: transformers raised {type(err).__name__}: {first_line(err)}"
        ) from None
    channels = getattr(model.config, "num_channels", in_channels)
    if channels == 3 and in_channels == 1:
        from .builtin import _repeat_gray

        model.register_forward_pre_hook(_repeat_gray)
    model._kdsearch_head = ("classifier.",)
    return model


# --- what a pretrained model expects of its input, and what identifies it ----------------------------------------


def input_config(arch: str) -> dict[str, Any] | None:
    """``{"mean", "std", "image_size", "from"}`` the pretrained weights of ``arch`` were trained with: timm's
    ``pretrained_cfg``, or an ``hf/`` folder's ``preprocessor_config.json`` (and config's image_size); None when
    unknown or not a hub arch. Builds nothing."""
    kind = hub_kind(arch)
    rest = arch[len(kind or "") :]
    if kind == "timm/":
        cfg = _timm_cfg(require("timm", arch), rest)
        if cfg is None or not getattr(cfg, "mean", None):
            return None
        return {
            "mean": [float(v) for v in cfg.mean],
            "std": [float(v) for v in cfg.std],
            "image_size": int(cfg.input_size[-1]),
            "from": f"timm's pretrained_cfg of {rest}",
        }
    if kind == "hf/":
        folder = Path(rest).expanduser()
        out: dict[str, Any] = {"from": f"{folder / 'preprocessor_config.json'}"}
        try:
            pre = json.loads((folder / "preprocessor_config.json").read_text())
            out["mean"], out["std"] = [float(v) for v in pre["image_mean"]], [float(v) for v in pre["image_std"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            size = json.loads((folder / "config.json").read_text()).get("image_size")
            if isinstance(size, int):
                out["image_size"] = size
        except (OSError, ValueError, AttributeError):
            pass
        return out if len(out) > 1 else None
    return None


def pretrained_input(spec: Any) -> tuple[Any, str | None]:
    """``spec.data`` with the mean, std and image size that the pretrained teacher's (else student's) weights were
    trained with, where the study leaves them unset, and the line saying so (None when nothing changed). Only
    hub models that start from weights (``pretrained``, a checkpoint, an ``hf/`` folder) count; on 1-channel data
    the channels' means are averaged."""
    data = spec.data
    for role in ("teacher", "student"):
        m = getattr(spec, role)
        if not hub_kind(m.arch) or not (m.pretrained or m.checkpoint is not None or m.arch.startswith("hf/")):
            continue
        cfg = input_config(m.arch)
        if not cfg:
            continue
        update: dict[str, Any] = {}
        if data.mean is None and data.std is None and "mean" in cfg:
            mean, std = cfg["mean"], cfg["std"]
            if data.resolved_channels() == 1 and len(mean) > 1:
                mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
            update.update(mean=[round(v, 6) for v in mean], std=[round(v, 6) for v in std])
        if data.image_size is None and "image_size" in cfg:
            update["image_size"] = cfg["image_size"]
        if not update:
            return data, None
        said = ", ".join(f"{k} {v}" for k, v in update.items())
        return data.model_copy(update=update), (
            f"data: {said} from {cfg['from']} (the {role}'s pretrained weights); set data.mean/std/image_size to "
            "choose others"
        )
    return data, None
