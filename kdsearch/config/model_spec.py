"""``TeacherSpec`` and ``StudentSpec``: which architecture, from which weights, trained how (``[teacher]``,
``[student]``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, field_validator, model_validator

from .catalog import WIDTH_MODELS, is_model, model_names
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


def check_width_args(arch: str, args: dict[str, Any]) -> None:
    """ValueError unless ``args`` is empty or ``{"width": x}`` with a number x > 0 (a seed net's channel multiplier)."""
    extra = sorted(set(args) - {"width"})
    if extra:
        raise ValueError(f"arch_args: {arch} takes only width (a channel multiplier), not {', '.join(extra)}")
    width = args.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 64:
        raise ValueError(f"arch_args.width = {width!r}: give a channel multiplier > 0 (and at most 64), e.g. 0.5")


class ModelSpec(Section):
    """An architecture (a registry name or the user's ``package.module:callable``) and how it is trained."""

    arch: str = Field(
        description="a registry name (kdsearch models), 'package.module:callable' building the user's nn.Module, "
        "'timm/<model name>', 'hf/<save_pretrained folder>' or 'hf-config/<config folder or .json>'"
    )
    arch_args: dict[str, Any] = Field(
        {},
        description="extra keyword arguments for the arch's callable (they beat the shape "
        "keywords kdsearch passes); for timm/ archs timm.create_model's, for hf/ from_pretrained's, for hf-config/ "
        "config fields; the seed nets (light_nn, deep_nn, bn_cnn, ...) take { width = 0.5 }, a channel multiplier",
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
        if self.arch in WIDTH_MODELS:
            check_width_args(self.arch, self.arch_args)
        elif self.arch_args and not (is_import_path(self.arch) or hub_kind(self.arch)):
            raise ValueError(
                f"arch_args: only an import-path, timm/ or hf/ arch, or a seed net taking a width "
                f"({', '.join(sorted(WIDTH_MODELS))}), takes arguments (arch is {self.arch!r})"
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


CANDIDATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # names a folder students/<name>/ and a trial param
CANDIDATE_FIELDS = ("arch", "arch_args", "pretrained", "checkpoint", "checkpoint_ignore", "feature_layer")


class StudentCandidate(Section):
    """One candidate student of ``[[student.candidates]]``: a name and what differs from ``[student]`` (the
    architecture and its weights); training settings (epochs, batch size, lr, augmentation) are ``[student]``'s."""

    name: str = Field(description="names the candidate in trials (param student), the report and students/<name>/")
    arch: Optional[str] = Field(None, description="its architecture, as student.arch (default: student.arch)")
    arch_args: Optional[dict[str, Any]] = Field(
        None, description="its arch_args, e.g. { width = 0.5 } for a seed net (default: student.arch_args)"
    )
    pretrained: Optional[bool] = Field(None, description="as student.pretrained (default: student's)")
    checkpoint: Optional[Path] = Field(None, description="its starting weights, as student.checkpoint (default: none)")
    checkpoint_ignore: list[str] = Field([], description="as student.checkpoint_ignore")
    feature_layer: Optional[str] = Field(None, description="as student.feature_layer (default: the model's)")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not CANDIDATE_NAME.fullmatch(name):
            raise ValueError(
                f"candidate name {name!r}: use letters, digits, '_', '.' or '-' (it names the folder students/<name>/)"
            )
        return name


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
    candidates: list[StudentCandidate] = Field(
        [],
        description="[[student.candidates]]: students of other sizes or families to choose among; each trial samples "
        "one (param student) and the report shows the accuracy-vs-cost front (empty: the one student above)",
    )

    @field_validator("arch")
    @classmethod
    def _trainable_arch(cls, name: str) -> str:
        if name in WHOLE_MODEL_ARCHS:
            raise ValueError(
                f"{name!r} is for a teacher used as it is; a student is built fresh for every trial: give a known "
                "model or 'package.module:callable'"
            )
        return name

    @model_validator(mode="after")
    def _valid_candidates(self) -> "StudentSpec":
        names = [c.name for c in self.candidates]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"candidates: the name {twice[0]!r} is used twice; give each candidate its own name")
        if len(self.candidates) == 1:
            raise ValueError("candidates: list two or more (one student is [student] itself)")
        for c in self.candidates:
            try:
                self.candidate_spec(c)
            except ValueError as err:  # pydantic's ValidationError is one: its first error's message
                errors = getattr(err, "errors", None)
                msg = errors()[0]["msg"].removeprefix("Value error, ") if callable(errors) else str(err)
                raise ValueError(f"candidate {c.name!r}: {msg}") from None
        return self

    def candidate_spec(self, candidate: StudentCandidate) -> "StudentSpec":
        """The student ``candidate`` stands for: this spec's training settings with its architecture and weights."""
        fields = self.model_dump(exclude={"candidates"})
        same_arch = candidate.arch is None or candidate.arch == self.arch
        fields.update(
            arch=candidate.arch or self.arch,
            arch_args=candidate.arch_args if candidate.arch_args is not None else (self.arch_args if same_arch else {}),
            pretrained=candidate.pretrained if candidate.pretrained is not None else self.pretrained and same_arch,
            checkpoint=candidate.checkpoint,
            checkpoint_ignore=list(candidate.checkpoint_ignore),
            feature_layer=candidate.feature_layer
            if candidate.feature_layer is not None
            else (self.feature_layer if same_arch else None),
        )
        return StudentSpec.model_validate(fields)

    def candidate_specs(self) -> dict[str, "StudentSpec"]:
        """Each candidate's name → the student it stands for, in the order listed ({} without candidates)."""
        return {c.name: self.candidate_spec(c) for c in self.candidates}
