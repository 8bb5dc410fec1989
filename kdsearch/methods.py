"""Distillation methods: each declares its loss (pure tensor maths) and its search space.

Convention (all methods): ``alpha`` weights the hard-label cross-entropy, ``1 - alpha`` the
soft loss, and the KL term carries the ``T**2`` factor of Hinton et al. so its gradient scale
stays comparable across temperatures. Hard-label terms only see the *labeled* rows of a batch;
the soft terms see every row (labeled and unlabeled transfer images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Registry


@dataclass(frozen=True)
class ParamRange:
    """A searched float parameter: sampled in [low, high], log-uniform when ``log``."""

    low: float
    high: float
    log: bool = False


@dataclass
class DistillBatch:
    """What a method's loss sees for one batch; teacher fields are None for teacher-free methods."""

    student_logits: Tensor
    labels: Tensor
    labeled: Tensor  # bool mask: rows whose hard label may be used
    teacher_logits: Tensor | None = None


def masked_cross_entropy(logits: Tensor, labels: Tensor, labeled: Tensor) -> Tensor:
    """Mean cross-entropy over the labeled rows; 0 (with a graph) when the batch has none."""
    per_row = F.cross_entropy(logits, labels, reduction="none")
    weights = labeled.to(per_row.dtype)
    return (per_row * weights).sum() / weights.sum().clamp_min(1.0)


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(softmax(t/T) || softmax(s/T))``, averaged over rows."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    labeled: Tensor,
    temperature: float,
    alpha: float,
) -> Tensor:
    """Hinton KD: ``alpha * CE(labeled) + (1 - alpha) * T**2 * KL(t/T || s/T)``."""
    hard = masked_cross_entropy(student_logits, labels, labeled)
    soft = soft_kl(student_logits, teacher_logits, temperature)
    return alpha * hard + (1.0 - alpha) * soft


class Method:
    """A distillation method: a name, default search ranges, and a loss over a ``DistillBatch``."""

    name: ClassVar[str]
    space: ClassVar[Mapping[str, ParamRange]] = {}
    needs_teacher: ClassVar[bool] = True

    def loss(self, batch: DistillBatch, params: Mapping[str, float]) -> Tensor:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


@METHODS.register("scratch")
class Scratch(Method):
    """The baseline: cross-entropy on the labeled images only, no teacher."""

    name = "scratch"
    space: ClassVar[Mapping[str, ParamRange]] = {}
    needs_teacher = False

    def loss(self, batch: DistillBatch, params: Mapping[str, float]) -> Tensor:
        return masked_cross_entropy(batch.student_logits, batch.labels, batch.labeled)


@METHODS.register("kd")
class KD(Method):
    """Hinton et al. 2015: soft targets at temperature T, weighted against hard labels by alpha."""

    name = "kd"
    space: ClassVar[Mapping[str, ParamRange]] = {
        "temperature": ParamRange(0.5, 20.0, log=True),
        "alpha": ParamRange(0.0, 1.0),
    }

    def loss(self, batch: DistillBatch, params: Mapping[str, float]) -> Tensor:
        assert batch.teacher_logits is not None
        return kd_loss(
            batch.student_logits,
            batch.teacher_logits,
            batch.labels,
            batch.labeled,
            temperature=params["temperature"],
            alpha=params["alpha"],
        )


def build_method(name: str) -> Method:
    """An instance of the registered method ``name`` (KdsearchError listing known ones if unknown)."""
    return METHODS.get(name)()


def searchable_methods() -> list[str]:
    """Methods a study may search over (everything but the scratch baseline)."""
    return [n for n in METHODS.names() if n != "scratch"]


__all__ = [
    "DistillBatch",
    "METHODS",
    "Method",
    "ParamRange",
    "build_method",
    "kd_loss",
    "masked_cross_entropy",
    "searchable_methods",
    "soft_kl",
]
