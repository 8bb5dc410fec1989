"""Distillation methods: each declares its loss (pure tensor maths) and its search space.

Convention (all methods): ``alpha`` weights the hard-label cross-entropy, ``1 - alpha`` the
soft loss, and every KL term carries the ``T**2`` factor of Hinton et al. so its gradient scale
stays comparable across temperatures. Hard-label terms only see the *labeled* rows of a batch;
the soft and feature terms see every row (labeled and unlabeled transfer images). Methods
without ``alpha`` (``dkd``, ``cosine``, ``hint``) give the hard cross-entropy weight 1 and weight
their distillation terms with their own parameters.

Methods, their searched parameters (trial params are named ``<method>_<param>``):

=========  ==============================================================  ==================
name       loss                                                            searched params
=========  ==============================================================  ==================
scratch    CE(labeled), no teacher (the baseline; never searched)          —
pseudo_    CE on labeled rows + CE on the teacher's arg-max label of the   —
label      unlabeled rows (the hard-label baseline; never searched)
kd         alpha·CE + (1-alpha)·T²·KL(t/T ‖ s/T)                           temperature, alpha
lskd       kd on per-row z-scored logits of both models (Sun et al. 2024)  temperature, alpha
                                                                           (log-uniform)
dkd        CE + w·(alpha_tckd·TCKD + beta·NCKD), both ×T² (Zhao et al.     temperature,
           2022); w = min(progress / warmup_epochs, 1) ramps the KD terms  alpha_tckd, beta
           up linearly (warmup_epochs: fixed at 1 unless a study sets it)  (warmup_epochs)
cosine     CE + feature_weight·mean(1 - cos(h_s, h_t)) on hidden vectors   feature_weight
hint       CE + feature_weight·MSE(r(f_s), f_t), r a learned regressor     feature_weight
           (FitNets, Romero et al. 2015)
=========  ==============================================================  ==================

How a method declares what it needs (the training loop reads these class variables):

``needs_teacher``
    True: ``DistillBatch.teacher_logits`` must be set and the student trains on labeled and
    unlabeled rows. False (``scratch``): no teacher, labeled rows only.
``min_classes``
    The fewest classes on which the method's loss still carries information (``lskd``, ``dkd``:
    3; see ``unusable_methods``). A study on fewer classes refuses or drops the method.
``needs_features``
    True (``cosine``, ``hint``): ``DistillBatch.student_features`` and ``teacher_features`` must
    be set. They are the outputs of each model's feature extractor for the batch's rows
    (``ConvClassifier.features``: ``(N, C, H, W)`` maps before the flatten), as float tensors;
    the student's with a graph, the teacher's as fixed targets (they are detached here).
    ``cosine`` flattens them to vectors; ``hint`` uses them as maps.
``make_regressor(student_shape, teacher_shape)``
    An extra trainable ``nn.Module`` the method needs (``hint``: a conv from student to teacher
    channels), else None. The shapes are **per example**, without the batch dimension
    (``(C, H, W)``). The training loop builds it once per student, moves it to the student's
    device, adds its parameters to the student's optimizer, and passes it back on every step as
    ``method.loss(batch, params, regressor=...)``. It is not part of the exported student.

Adding a method: write the loss as a pure function of tensors, then a small ``Method`` subclass
registered with ``@METHODS.register(name)`` that sets ``name``, ``space`` (default ranges as
``ParamRange``; a study's ``[methods.<name>]`` table may override them; ``low == high`` is a fixed
value, stored with the trial's params but not searched), and the flags above. A shipped method's space
is its line in ``kdsearch/config/catalog.py`` (which validates specs without torch; the class reads it from
there and says why the ranges are what they are); its flags are repeated there, and this module refuses
to import while the two differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.catalog import METHOD_CATALOG, MethodInfo, ParamRange, check_catalog
from ..registry import Registry

# Keeps the z-score finite for a row whose logits are all equal.
_STD_EPS = 1e-7


@dataclass
class DistillBatch:
    """What a method's loss sees for one batch; teacher fields are None for teacher-free methods.

    ``*_features`` are set only for methods with ``needs_features`` (see the module docstring).
    """

    student_logits: Tensor
    labels: Tensor
    labeled: Tensor  # bool mask: rows whose hard label may be used
    teacher_logits: Tensor | None = None
    student_features: Tensor | None = None  # (N, ...) from the student's feature extractor, with a graph
    teacher_features: Tensor | None = None  # (N, ...) from the teacher's feature extractor
    progress: float = math.inf  # epochs of training done when this batch is used (0.5: half-way through epoch 1)


# --------------------------------------------------------------------------- pure losses


def masked_cross_entropy(logits: Tensor, labels: Tensor, labeled: Tensor) -> Tensor:
    """Mean cross-entropy over the labeled rows; 0 (with a graph) when the batch has none."""
    per_row = F.cross_entropy(logits, labels, reduction="none")
    weights = labeled.to(per_row.dtype)
    return (per_row * weights).sum() / weights.sum().clamp_min(1.0)


def scaled_kl(log_p_student: Tensor, log_p_teacher: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(p_teacher || p_student)`` from log-probabilities, averaged over rows."""
    # F.kl_div(..., reduction="batchmean", log_target=True) written out: it has no vmap batching rule (stacked.py)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum() / log_p_student.shape[0]
    return kl * temperature**2


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(softmax(t/T) || softmax(s/T))``, averaged over rows."""
    return scaled_kl(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        temperature,
    )


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


def standardize_logits(logits: Tensor, eps: float = _STD_EPS) -> Tensor:
    """Per-row z-score ``(z - mean) / (std + eps)`` over the class dimension (LSKD's normalisation)."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def lskd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    labeled: Tensor,
    temperature: float,
    alpha: float,
) -> Tensor:
    """Logit-standardized KD: ``alpha * CE(labeled, raw s) + (1 - alpha) * T**2 * KL(z(t)/T || z(s)/T)``.

    ``z`` is the per-row z-score, so the soft term ignores each model's logit shift and scale.
    """
    hard = masked_cross_entropy(student_logits, labels, labeled)
    soft = soft_kl(standardize_logits(student_logits), standardize_logits(teacher_logits), temperature)
    return alpha * hard + (1.0 - alpha) * soft


def dkd_targets(teacher_logits: Tensor, labels: Tensor, labeled: Tensor) -> Tensor:
    """DKD's target class per row: the label where labeled, else the teacher's arg-max."""
    return torch.where(labeled, labels, teacher_logits.argmax(dim=-1))


def tckd_term(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(b_t || b_s)``, rows averaged; ``b = (p_target, 1 - p_target)`` at temperature T."""
    target_mask = F.one_hot(target, student_logits.shape[-1]).bool()

    def binary_log_probs(logits: Tensor) -> Tensor:
        log_p = F.log_softmax(logits / temperature, dim=-1)
        log_p_target = log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        log_p_other = log_p.masked_fill(target_mask, float("-inf")).logsumexp(dim=-1)
        return torch.stack([log_p_target, log_p_other], dim=-1)

    return scaled_kl(binary_log_probs(student_logits), binary_log_probs(teacher_logits), temperature)


def nckd_term(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(p̂_t || p̂_s)``, rows averaged; ``p̂`` = softmax at T over the non-target classes."""
    target_mask = F.one_hot(target, student_logits.shape[-1]).bool()

    def non_target_log_probs(logits: Tensor) -> Tensor:
        # a huge finite negative takes the target class out whatever the logits' scale (no -inf: no NaN in the KL)
        scaled = logits / temperature
        return F.log_softmax(scaled.masked_fill(target_mask, torch.finfo(scaled.dtype).min / 4), dim=-1)

    return scaled_kl(non_target_log_probs(student_logits), non_target_log_probs(teacher_logits), temperature)


def warmup_factor(progress: float | Tensor, warmup_epochs: float | Tensor) -> float | Tensor:
    """``min(progress / warmup_epochs, 1)``: the linear warm-up of DKD's distillation terms (1 without warm-up).

    Floats give a float; tensors (one value per stacked student, under ``vmap``) give a tensor, without
    data-dependent branches.
    """
    if isinstance(progress, Tensor) or isinstance(warmup_epochs, Tensor):
        progress, warmup_epochs = torch.as_tensor(progress), torch.as_tensor(warmup_epochs)
        ramp = (progress / warmup_epochs.clamp_min(1e-12)).clamp(max=1.0)
        return torch.where(warmup_epochs <= 0, torch.ones_like(ramp), ramp)
    if warmup_epochs <= 0:
        return 1.0
    return min(progress / warmup_epochs, 1.0)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    labeled: Tensor,
    temperature: float,
    alpha_tckd: float,
    beta: float,
    warmup: float = 1.0,
) -> Tensor:
    """Decoupled KD: ``CE(labeled) + warmup * (alpha_tckd * TCKD + beta * NCKD)`` (targets from ``dkd_targets``).

    ``warmup`` in [0, 1] scales the distillation terms (``warmup_factor``): with ``beta * T**2`` in the
    thousands, full-strength NCKD from the first step can blow up a fresh student (the paper warms up).
    """
    target = dkd_targets(teacher_logits, labels, labeled)
    hard = masked_cross_entropy(student_logits, labels, labeled)
    tckd = tckd_term(student_logits, teacher_logits, target, temperature)
    nckd = nckd_term(student_logits, teacher_logits, target, temperature)
    return hard + warmup * (alpha_tckd * tckd + beta * nckd)


def pseudo_label_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, labeled: Tensor) -> Tensor:
    """Mean CE over every row against its label where labeled, else the teacher's arg-max (a hard pseudo-label)."""
    return F.cross_entropy(student_logits, dkd_targets(teacher_logits, labels, labeled))


def _pool_width(vectors: Tensor, width: int) -> Tensor:
    """``(N, D)`` → ``(N, width)`` by 1-D adaptive average pooling (identity when ``D == width``)."""
    if vectors.shape[1] == width:
        return vectors
    return F.adaptive_avg_pool1d(vectors.unsqueeze(1), width).squeeze(1)


def cosine_feature_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """``mean over rows of 1 - cos(h_s, h_t)``; features flattened per row, the wider pooled to the narrower."""
    s = student_features.flatten(1)
    t = teacher_features.detach().flatten(1)
    width = min(s.shape[1], t.shape[1])
    s, t = _pool_width(s, width), _pool_width(t, width)
    dtype = torch.promote_types(s.dtype, t.dtype)
    return (1.0 - F.cosine_similarity(s.to(dtype), t.to(dtype), dim=1)).mean()


def hint_feature_loss(student_features: Tensor, teacher_features: Tensor, regressor: nn.Module) -> Tensor:
    """``MSE(regressor(f_s), f_t)`` averaged over every element; the regressor must output f_t's shape."""
    regressed = regressor(student_features)
    target = teacher_features.detach()
    if regressed.shape != target.shape:
        raise ValueError(
            f"hint: the regressor maps student features {tuple(student_features.shape)} to "
            f"{tuple(regressed.shape)}, but the teacher features are {tuple(target.shape)}; "
            "build it with make_regressor from the per-example feature shapes"
        )
    dtype = torch.promote_types(regressed.dtype, target.dtype)
    return F.mse_loss(regressed.to(dtype), target.to(dtype))


class HintRegressor(nn.Module):
    """FitNets' regressor: adaptive-avg-pool to the teacher's spatial size (when it differs), then a conv
    from the student's channels to the teacher's (``kernel_size`` 1 or 3, size-preserving)."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], kernel_size: int = 1) -> None:
        super().__init__()
        for which, shape in (("student", student_shape), ("teacher", teacher_shape)):
            if len(shape) != 3:
                raise ValueError(
                    f"hint needs per-example (C, H, W) feature maps; the {which} shape is {tuple(shape)} "
                    "(pass the shape without the batch dimension)"
                )
        if kernel_size not in (1, 3):
            raise ValueError(f"hint regressor kernel_size must be 1 or 3, not {kernel_size}")
        self.size = (int(teacher_shape[1]), int(teacher_shape[2]))
        self.resize = tuple(student_shape[1:]) != self.size
        self.conv = nn.Conv2d(int(student_shape[0]), int(teacher_shape[0]), kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.resize:
            x = F.adaptive_avg_pool2d(x, self.size)
        return self.conv(x)


# --------------------------------------------------------------------------- methods


def _need(value: Tensor | None, field: str, method: str) -> Tensor:
    if value is None:
        raise ValueError(
            f"method {method!r} needs DistillBatch.{field}, which is None; the training loop must provide it "
            "(see needs_teacher / needs_features in kdsearch.distill.methods)"
        )
    return value


class Method:
    """A distillation method: a name, default search ranges, and a loss over a ``DistillBatch``."""

    name: ClassVar[str]
    space: ClassVar[Mapping[str, ParamRange]] = {}
    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False
    min_classes: ClassVar[int] = 2
    searchable: ClassVar[bool] = True  # False for the baselines of the final comparison

    def make_regressor(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module | None:
        """An extra trainable module for ``loss`` (per-example feature shapes in), or None if none is needed."""
        return None

    def loss(self, batch: DistillBatch, params: Mapping[str, float], *, regressor: nn.Module | None = None) -> Tensor:
        """The scalar training loss of one batch with this trial's ``params`` (keys as in ``space``)."""
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


@METHODS.register("scratch")
class Scratch(Method):
    """The baseline: cross-entropy on the labeled images only, no teacher."""

    name = "scratch"
    space: ClassVar[Mapping[str, ParamRange]] = {}
    needs_teacher = False
    searchable = False

    def loss(self, batch: DistillBatch, params: Mapping[str, float], *, regressor: nn.Module | None = None) -> Tensor:
        return masked_cross_entropy(batch.student_logits, batch.labels, batch.labeled)


@METHODS.register("pseudo_label")
class PseudoLabel(Method):
    """The hard-label baseline: CE on the labeled rows' labels and on the teacher's arg-max of the others.

    Same rows and steps as a distilled student; it tells whether the teacher's soft targets add
    anything over its hard decisions.
    """

    name = "pseudo_label"
    space: ClassVar[Mapping[str, ParamRange]] = {}
    searchable = False

    def loss(self, batch: DistillBatch, params: Mapping[str, float], *, regressor: nn.Module | None = None) -> Tensor:
        return pseudo_label_loss(
            batch.student_logits, _need(batch.teacher_logits, "teacher_logits", self.name), batch.labels, batch.labeled
        )


@METHODS.register("kd")
class KD(Method):
    """Hinton et al. 2015: soft targets at temperature T, weighted against hard labels by alpha."""

    name = "kd"
    space: ClassVar[Mapping[str, ParamRange]] = METHOD_CATALOG["kd"].space
    logit_loss = staticmethod(kd_loss)  # (student, teacher, labels, labeled, temperature, alpha) -> loss

    def loss(self, batch: DistillBatch, params: Mapping[str, float], *, regressor: nn.Module | None = None) -> Tensor:
        return self.logit_loss(
            batch.student_logits,
            _need(batch.teacher_logits, "teacher_logits", self.name),
            batch.labels,
            batch.labeled,
            temperature=params["temperature"],
            alpha=params["alpha"],
        )


@METHODS.register("lskd")
class LSKD(KD):
    """Sun et al. 2024 (logit standardization): KD on per-row z-scored logits, same alpha/T convention.

    alpha is log-uniform on [0.001, 1]: the paper's CE:KD weights of 0.1:9 (alpha ≈ 0.011) sit in
    the low decades that a uniform range would almost never sample. On two classes the z-scores
    are always ±1/√2, so the soft term has no gradient: ``min_classes = 3``.
    """

    name = "lskd"
    space: ClassVar[Mapping[str, ParamRange]] = METHOD_CATALOG["lskd"].space
    logit_loss = staticmethod(lskd_loss)
    min_classes = 3


@METHODS.register("dkd")
class DKD(Method):
    """Zhao et al. 2022 (decoupled KD): target-class and non-target-class KL weighted separately.

    Ranges: the paper uses alpha_tckd = 1 and beta = 8 (CIFAR-100) or 0.5 (ImageNet) at T = 4, so
    alpha_tckd spans [0.1, 4] and beta [0.5, 16], both log-uniform; T spans KD's range. The
    distillation terms warm up linearly over ``warmup_epochs`` (fixed at 1; the paper ramps over
    20 of its 240 epochs). On two classes the non-target distribution has one class, so NCKD is
    identically 0 and dkd is kd: ``min_classes = 3``.
    """

    name = "dkd"
    space: ClassVar[Mapping[str, ParamRange]] = METHOD_CATALOG["dkd"].space
    min_classes = 3

    def loss(self, batch: DistillBatch, params: Mapping[str, float], *, regressor: nn.Module | None = None) -> Tensor:
        return dkd_loss(
            batch.student_logits,
            _need(batch.teacher_logits, "teacher_logits", self.name),
            batch.labels,
            batch.labeled,
            temperature=params["temperature"],
            alpha_tckd=params["alpha_tckd"],
            beta=params["beta"],
            warmup=warmup_factor(batch.progress, params.get("warmup_epochs", 0.0)),
        )


class FeatureMethod(Method):
    """CE on the labeled rows + ``feature_weight`` × a loss between student and teacher features."""

    space: ClassVar[Mapping[str, ParamRange]] = METHOD_CATALOG["cosine"].space  # cosine and hint share it
    needs_features = True

    def feature_loss(self, student: Tensor, teacher: Tensor, regressor: nn.Module | None) -> Tensor:
        raise NotImplementedError

    def loss(self, batch: DistillBatch, params: Mapping[str, float], *, regressor: nn.Module | None = None) -> Tensor:
        hard = masked_cross_entropy(batch.student_logits, batch.labels, batch.labeled)
        feature = self.feature_loss(
            _need(batch.student_features, "student_features", self.name),
            _need(batch.teacher_features, "teacher_features", self.name),
            regressor,
        )
        return hard + params["feature_weight"] * feature


@METHODS.register("cosine")
class Cosine(FeatureMethod):
    """Hidden-representation matching (seed 004): CE + feature_weight · (1 - cosine) on flattened features."""

    name = "cosine"

    def feature_loss(self, student: Tensor, teacher: Tensor, regressor: nn.Module | None) -> Tensor:
        return cosine_feature_loss(student, teacher)


@METHODS.register("hint")
class Hint(FeatureMethod):
    """FitNets (Romero et al. 2015), trained jointly: CE + feature_weight · MSE(regressor(f_s), f_t)."""

    name = "hint"

    def make_regressor(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
        return HintRegressor(student_shape, teacher_shape)

    def feature_loss(self, student: Tensor, teacher: Tensor, regressor: nn.Module | None) -> Tensor:
        if regressor is None:
            raise ValueError(
                "method 'hint' needs its regressor: build it with make_regressor(student_shape, teacher_shape), "
                "train it with the student, and pass it as loss(..., regressor=...)"
            )
        return hint_feature_loss(student, teacher, regressor)


check_catalog(METHODS, METHOD_CATALOG, lambda name: MethodInfo.of(METHODS.get(name)))


def build_method(name: str) -> Method:
    """An instance of the registered method ``name`` (KdsearchError listing known ones if unknown)."""
    return METHODS.get(name)()


def unusable_methods(methods: list[str], num_classes: int) -> dict[str, str]:
    """Method → why it cannot learn anything more than kd on a task with ``num_classes`` classes."""
    reasons = {
        "lskd": "the z-scores of two logits are always ±1/√2, so its soft term has no gradient",
        "dkd": "its non-target distribution has a single class, so NCKD is 0 and beta does nothing (dkd is kd)",
    }
    return {
        m: reasons.get(m, f"it needs at least {METHODS.get(m).min_classes} classes")
        for m in methods
        if num_classes < METHODS.get(m).min_classes
    }


__all__ = [
    "DistillBatch",
    "HintRegressor",
    "METHODS",
    "Method",
    "ParamRange",
    "build_method",
    "cosine_feature_loss",
    "dkd_loss",
    "dkd_targets",
    "hint_feature_loss",
    "kd_loss",
    "lskd_loss",
    "masked_cross_entropy",
    "nckd_term",
    "pseudo_label_loss",
    "soft_kl",
    "standardize_logits",
    "tckd_term",
    "unusable_methods",
    "warmup_factor",
]
