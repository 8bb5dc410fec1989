"""``TeacherSpec`` and ``StudentSpec``: which architecture, from which weights, trained how (``[teacher]``,
``[student]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from .catalog import is_model, model_names
from .section import Section, is_import_path

WHOLE_MODEL_ARCHS = ("torchscript", "exported")  # teacher.arch values that take the whole model from teacher.checkpoint
GIVEN_ARCH = "python"  # arch of a model object handed to the Python API (kdsearch.run_study(teacher=..., student=...))
HUB_PREFIXES = {  # arch prefix: what follows it, and the extra that builds it
    "timm/": ("a timm model name, e.g. timm/resnet18", "timm"),
    "hf/": ("a Hugging Face save_pretrained folder (config + weights)", "hf"),
    "hf-config/": ("a Hugging Face config: a folder with config.json, or a .json file (fresh weights)", "hf"),
}
HF_PATH_PREFIXES = ("hf/", "hf-config/")  # hub archs naming a path (relative to the study file)


def hub_kind(name: str) -> str | None:
    """The hub prefix of ``name`` (``"timm/"``, ``"hf/"``, ``"hf-config/"``) when it has one and a non-empty rest."""
    for prefix in HUB_PREFIXES:
        if name.startswith(prefix) and name[len(prefix) :].strip():
            return prefix
    return None


class ModelSpec(Section):
    """An architecture (a registry name or the user's ``package.module:callable``) and how it is trained."""

    arch: str = Field(
        description="a registry name (kdsearch models), 'package.module:callable' building the user's nn.Module, "
        "'timm/<model name>', 'hf/<save_pretrained folder>' or 'hf-config/<config folder or .json>'"
    )
    arch_args: dict[str, Any] = Field(
        {},
        description="extra keyword arguments for the arch's callable, e.g. { width = 32 } (they beat the shape "
        "keywords kdsearch passes); for timm/ archs timm.create_model's, for hf/ from_pretrained's, for hf-config/ "
        "config fields",
    )
    pretrained: bool = Field(
        False,
        description="timm/ archs: start from timm's pretrained weights, read from the local Hugging Face cache "
        "(downloaded only when not there and reachable); a head of another class count is re-initialised",
    )
    epochs: int = Field(5, ge=1, description="training epochs")
    batch_size: int = Field(128, ge=1, description="images per optimizer step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    feature_layer: str | None = Field(
        None,
        description="module path tapped by feature methods (cosine, hint); default: the model's registry entry, else "
        "the module just before its last nn.Linear",
    )
    checkpoint: Path | None = Field(
        None,
        description="start from these weights: a state_dict or TorchScript .pt, a .safetensors file, or a hub-style "
        "folder holding model.safetensors or pytorch_model.bin",
    )
    checkpoint_ignore: list[str] = Field(
        [], description="key prefixes not loaded from the checkpoint, e.g. ['fc.'] for a replaced classifier head"
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, name: str) -> str:
        for prefix, (what, _extra) in HUB_PREFIXES.items():
            if name.startswith(prefix) and not hub_kind(name):
                raise ValueError(f"arch {name!r}: write {prefix} followed by {what}")
        if (
            not is_model(name)
            and not is_import_path(name)
            and not hub_kind(name)
            and name not in (*WHOLE_MODEL_ARCHS, GIVEN_ARCH)
        ):
            raise ValueError(
                f"unknown model {name!r}; give a known model ({', '.join(model_names())}), your own as "
                "'package.module:callable', or 'timm/<name>', 'hf/<folder>', 'hf-config/<folder or .json>'"
            )
        return name

    @model_validator(mode="after")
    def _args_for_import_paths(self) -> "ModelSpec":
        if self.arch_args and not (is_import_path(self.arch) or hub_kind(self.arch)):
            raise ValueError(
                f"arch_args: only an import-path, timm/ or hf/ arch takes arguments (arch is {self.arch!r})"
            )
        if self.pretrained and hub_kind(self.arch) != "timm/":
            how = "its folder's weights are used" if hub_kind(self.arch) == "hf/" else "give its weights as checkpoint"
            raise ValueError(f"pretrained = true is for timm/ archs (arch is {self.arch!r}; {how})")
        if self.pretrained and self.checkpoint is not None:
            raise ValueError("pretrained = true and checkpoint both give the starting weights; keep one")
        return self


class TeacherSpec(ModelSpec):
    """The teacher: trained (or loaded from ``checkpoint``) once, scored on validation and cached with its outputs
    on the training split; every trial of the study distills from it."""

    arch: str = Field(
        "bn_cnn",
        description="a registry name, 'package.module:callable' building the user's nn.Module, or 'torchscript' / "
        "'exported': the whole model read from checkpoint",
    )
    epochs: int = Field(
        6,
        ge=1,
        description="training epochs on the training split, from scratch; unused when the weights come from a "
        "checkpoint, a whole-model file or Python (fine_tune_epochs applies then)",
    )
    seed: int = Field(0, description="torch seed of the teacher's initial weights, batch order and augmentation")
    augment_shift: int = Field(0, ge=0, description="train the teacher on random shifts of up to N pixels (0: off)")
    augment_flip: bool = Field(False, description="train the teacher on random horizontal flips")
    fine_tune_epochs: int = Field(
        0, ge=0, description="with a checkpoint: epochs of fine-tuning on this dataset (0: use it as it is)"
    )
    feature_cache_mb: float = Field(
        1024,
        ge=0,
        description="MB of teacher features (float16) that cosine/hint trials may keep in memory, computed once; "
        "above it those trials run the teacher live",
    )

    @model_validator(mode="after")
    def _whole_model_needs_file(self) -> "TeacherSpec":
        if self.arch in WHOLE_MODEL_ARCHS and self.checkpoint is None:
            kind = "a TorchScript file" if self.arch == "torchscript" else "a torch.export program (.pt2)"
            raise ValueError(f"arch = {self.arch!r} takes the whole model from checkpoint; set checkpoint to {kind}")
        return self


class StudentSpec(ModelSpec):
    """The student: built fresh for every trial and for every seed of the final comparison; scratch and pseudo-label
    baselines have the same architecture and the same number of optimizer steps."""

    arch: str = Field(
        "light_nn",
        description="a registry name or 'package.module:callable' building the user's nn.Module (not a "
        "whole-model file: a student is trained from its initial weights)",
    )
    epochs: int = Field(
        5,
        ge=1,
        description="epochs of every trial and of every retrained student; an epoch is (labeled + unlabeled) // "
        "batch_size steps, for scratch too (kdsearch export --epochs trains longer)",
    )
    augment_shift: int = Field(2, ge=0, description="'consistent' mode: random shifts of up to N pixels")
    augment_flip: bool = Field(True, description="'consistent' mode: random horizontal flips (false for digits)")

    @field_validator("arch")
    @classmethod
    def _trainable_arch(cls, name: str) -> str:
        if name in WHOLE_MODEL_ARCHS:
            raise ValueError(
                f"{name!r} is for a teacher used as it is; a student is built fresh for every trial: give a known "
                "model or 'package.module:callable'"
            )
        return name
