"""Distillation losses do the maths their papers describe, and the search samples each method's own space."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.config.catalog import searchable_method_names
from kdsearch.config.load import spec_from_dict
from kdsearch.config.spec import StudySpec
from kdsearch.distill.methods import (
    METHODS,
    DistillBatch,
    HintRegressor,
    ParamRange,
    build_method,
    cosine_feature_loss,
    dkd_loss,
    dkd_targets,
    hint_feature_loss,
    kd_loss,
    lskd_loss,
    masked_cross_entropy,
    nckd_term,
    soft_kl,
    tckd_term,
)
from kdsearch.search.objective import trial_params
from kdsearch.search.study import make_sampler

NUM_CLASSES = 5
ALL_METHODS = ["kd", "cosine", "hint", "dkd", "lskd"]


def logits_batch(n: int = 8, seed: int = 0, scale: float = 2.0):
    """Random student/teacher logits, labels, and a mask with labeled and unlabeled rows."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, NUM_CLASSES, generator=g) * scale
    teacher = torch.randn(n, NUM_CLASSES, generator=g) * scale
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    labeled = torch.arange(n) % 2 == 0
    return student, teacher, labels, labeled


def mid_params(space) -> dict[str, float]:
    """A value inside every range (geometric midpoint on log ranges)."""
    return {k: math.sqrt(r.low * r.high) if r.log else (r.low + r.high) / 2 for k, r in space.items()}


class TinyStudent(nn.Module):
    """A conv feature extractor (N, 4, 8, 8) and a linear head; returns (logits, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh())
        self.classifier = nn.Linear(4 * 8 * 8, NUM_CLASSES)

    def forward(self, x):
        f = self.features(x)
        return self.classifier(f.flatten(1)), f


def student_batch(student: TinyStudent, n: int = 8, seed: int = 0, labeled: torch.Tensor | None = None):
    """A DistillBatch from a forward pass of ``student``, with a teacher whose maps are (6, 4, 4)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    logits, feats = student(x)
    return DistillBatch(
        student_logits=logits,
        labels=torch.randint(0, NUM_CLASSES, (n,), generator=g),
        labeled=torch.arange(n) % 2 == 0 if labeled is None else labeled,
        teacher_logits=torch.randn(n, NUM_CLASSES, generator=g) * 2,
        student_features=feats,
        teacher_features=torch.randn(n, 6, 4, 4, generator=g),
    )


# --------------------------------------------------------------------------- KD and masked CE


def test_kd_with_alpha_one_is_cross_entropy_on_labeled_rows():
    s, t, y, labeled = logits_batch()
    loss = kd_loss(s, t, y, labeled, temperature=4.0, alpha=1.0)
    torch.testing.assert_close(loss, F.cross_entropy(s[labeled], y[labeled]))


def test_identical_student_and_teacher_have_zero_soft_loss():
    s, _, y, labeled = logits_batch()
    for temperature in (0.5, 1.0, 4.0, 20.0):
        torch.testing.assert_close(soft_kl(s, s.clone(), temperature), torch.tensor(0.0), atol=1e-6, rtol=0)
        torch.testing.assert_close(
            kd_loss(s, s.clone(), y, labeled, temperature, alpha=0.0), torch.tensor(0.0), atol=1e-6, rtol=0
        )


def _soft_grad_norm(temperature: float, with_t_squared: bool) -> float:
    s, t, _, _ = logits_batch(scale=0.1)  # small logits: the high-temperature regime
    s.requires_grad_(True)
    loss = soft_kl(s, t, temperature)
    if not with_t_squared:
        loss = loss / temperature**2
    (grad,) = torch.autograd.grad(loss, s)
    return float(grad.norm())


def test_t_squared_keeps_soft_gradient_scale_comparable_across_temperatures():
    ratio = _soft_grad_norm(2.0, True) / _soft_grad_norm(8.0, True)
    assert 1 / 3 < ratio < 3
    ratio_without = _soft_grad_norm(2.0, False) / _soft_grad_norm(8.0, False)
    assert ratio_without > 8  # ~ (8/2)**2 = 16 without the factor


def test_masked_cross_entropy_ignores_labels_of_unlabeled_rows():
    s, _, y, labeled = logits_batch()
    other = y.clone()
    other[~labeled] = (y[~labeled] + 1) % NUM_CLASSES
    torch.testing.assert_close(masked_cross_entropy(s, y, labeled), masked_cross_entropy(s, other, labeled))


def test_batch_without_labeled_rows_has_zero_hard_loss_and_still_backpropagates():
    s, _, y, _ = logits_batch()
    s.requires_grad_(True)
    loss = masked_cross_entropy(s, y, torch.zeros(len(y), dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert s.grad is not None and float(s.grad.abs().sum()) == 0.0


# --------------------------------------------------------------------------- every method trains a student


@pytest.mark.parametrize("name", METHODS.names())
def test_loss_is_finite_and_reaches_every_student_and_regressor_parameter(name):
    torch.manual_seed(0)
    method = build_method(name)
    student = TinyStudent()
    batch = student_batch(student)
    regressor = method.make_regressor(tuple(batch.student_features.shape[1:]), tuple(batch.teacher_features.shape[1:]))
    if name == "hint":
        assert regressor is not None
    loss = method.loss(batch, mid_params(method.space), regressor=regressor)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    params = dict(student.named_parameters())
    if regressor is not None:
        params.update({f"regressor.{k}": p for k, p in regressor.named_parameters()})
    for pname, p in params.items():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"{name}: no gradient reaches {pname}"


@pytest.mark.parametrize("name", ["cosine", "hint"])
def test_feature_term_alone_trains_the_feature_extractor(name):
    """With no labeled rows, the feature term still sends gradient to the student's convs (not its head)."""
    torch.manual_seed(0)
    method = build_method(name)
    student = TinyStudent()
    batch = student_batch(student, labeled=torch.zeros(8, dtype=torch.bool))
    regressor = method.make_regressor((4, 8, 8), (6, 4, 4))
    method.loss(batch, {"feature_weight": 1.0}, regressor=regressor).backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in student.features.parameters())
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in student.classifier.parameters())


def test_feature_methods_say_what_is_missing():
    batch = student_batch(TinyStudent())
    batch.teacher_features = None
    with pytest.raises(ValueError, match="teacher_features"):
        build_method("cosine").loss(batch, {"feature_weight": 1.0})
    with pytest.raises(ValueError, match="regressor"):
        build_method("hint").loss(student_batch(TinyStudent()), {"feature_weight": 1.0})


# --------------------------------------------------------------------------- cosine and hint


def test_cosine_term_is_zero_for_identical_or_rescaled_features():
    torch.manual_seed(0)
    f = torch.randn(6, 3, 4, 4)
    torch.testing.assert_close(cosine_feature_loss(f, f.clone()), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_feature_loss(f, 3.0 * f), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_feature_loss(f, -f), torch.tensor(2.0))


def test_cosine_pools_the_wider_representation_down_to_the_narrower():
    """As seed 004 pools the teacher's 2048-d vector to the student's 1024: pairs of features are averaged."""
    torch.manual_seed(0)
    narrow = torch.randn(4, 8)
    wide = narrow.repeat_interleave(2, dim=1) + torch.tensor([0.5, -0.5]).repeat(8)  # pair means equal narrow
    torch.testing.assert_close(cosine_feature_loss(narrow, wide), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_feature_loss(wide, narrow), torch.tensor(0.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("student_shape", [(4, 8, 8), (4, 4, 4), (4, 2, 2)])
def test_hint_regressor_maps_student_maps_to_the_teacher_shape(student_shape):
    method = build_method("hint")
    regressor = method.make_regressor(student_shape, (6, 4, 4))
    assert isinstance(regressor, HintRegressor)
    out = regressor(torch.randn(3, *student_shape))
    assert out.shape == (3, 6, 4, 4)
    assert hint_feature_loss(torch.randn(3, *student_shape), out.detach(), regressor).dim() == 0


def test_hint_regressor_rejects_shapes_with_a_batch_dimension():
    with pytest.raises(ValueError) as err:
        build_method("hint").make_regressor((8, 4, 8, 8), (8, 6, 4, 4))
    assert str(err.value) == (
        "hint needs per-example (C, H, W) feature maps; the student shape is (8, 4, 8, 8) "
        "(pass the shape without the batch dimension)"
    )


def test_only_hint_builds_a_regressor():
    for name in METHODS.names():
        regressor = build_method(name).make_regressor((4, 8, 8), (6, 4, 4))
        assert (regressor is not None) == (name == "hint")


# --------------------------------------------------------------------------- DKD


def _reference_tckd(s, t, target, temperature):
    """TCKD as written in the paper: KL of the binary (target, non-target) probabilities, ×T²."""
    ps, pt = F.softmax(s / temperature, -1), F.softmax(t / temperature, -1)
    mask = F.one_hot(target, s.shape[-1]).bool()
    bs = torch.stack([ps[mask], ps[~mask].view(len(s), -1).sum(-1)], -1)
    bt = torch.stack([pt[mask], pt[~mask].view(len(t), -1).sum(-1)], -1)
    return (bt * (bt.log() - bs.log())).sum(-1).mean() * temperature**2


def test_dkd_with_beta_zero_and_unit_alpha_is_cross_entropy_plus_tckd():
    s, t, y, labeled = logits_batch()
    target = dkd_targets(t, y, labeled)
    expected = masked_cross_entropy(s, y, labeled) + _reference_tckd(s, t, target, 4.0)
    torch.testing.assert_close(dkd_loss(s, t, y, labeled, temperature=4.0, alpha_tckd=1.0, beta=0.0), expected)


def test_dkd_terms_recompose_classical_kd():
    """Zhao et al. eq. (1): KD = TCKD + (1 - p_target of the teacher) · NCKD, row by row."""
    s, t, y, labeled = logits_batch(seed=3)
    target = dkd_targets(t, y, labeled)
    temperature = 2.0
    for i in range(len(s)):
        row = slice(i, i + 1)
        p_other = 1 - F.softmax(t[row] / temperature, -1)[0, target[i]]
        recomposed = tckd_term(s[row], t[row], target[row], temperature) + p_other * nckd_term(
            s[row], t[row], target[row], temperature
        )
        torch.testing.assert_close(recomposed, soft_kl(s[row], t[row], temperature), rtol=1e-4, atol=1e-6)


def test_dkd_targets_unlabeled_rows_at_the_teachers_top_class():
    s, t, y, labeled = logits_batch()
    target = dkd_targets(t, y, labeled)
    assert torch.equal(target[labeled], y[labeled])
    assert torch.equal(target[~labeled], t[~labeled].argmax(-1))
    other = y.clone()
    other[~labeled] = (y[~labeled] + 1) % NUM_CLASSES
    args = dict(temperature=4.0, alpha_tckd=1.0, beta=8.0)
    torch.testing.assert_close(dkd_loss(s, t, y, labeled, **args), dkd_loss(s, t, other, labeled, **args))


def test_nckd_ignores_the_target_class():
    """Only the non-target distribution matters: moving both models' target logit changes nothing."""
    s, t, y, labeled = logits_batch()
    target = dkd_targets(t, y, labeled)
    bump = 3.0 * F.one_hot(target, NUM_CLASSES)
    torch.testing.assert_close(nckd_term(s + bump, t - bump, target, 4.0), nckd_term(s, t, target, 4.0))


# --------------------------------------------------------------------------- LSKD


def test_lskd_ignores_shift_and_positive_scale_of_the_teacher_logits():
    s, t, y, labeled = logits_batch()
    base = lskd_loss(s, t, y, labeled, temperature=2.0, alpha=0.3)
    torch.testing.assert_close(lskd_loss(s, 3.0 * t + 5.0, y, labeled, temperature=2.0, alpha=0.3), base)
    per_row = torch.rand(len(t), 1) * 4 + 0.5
    torch.testing.assert_close(lskd_loss(s, per_row * t - 2.0, y, labeled, temperature=2.0, alpha=0.3), base)


def test_lskd_soft_term_ignores_shift_and_positive_scale_of_the_student_logits():
    s, t, y, labeled = logits_batch()
    base = lskd_loss(s, t, y, labeled, temperature=2.0, alpha=0.0)
    torch.testing.assert_close(lskd_loss(0.25 * s - 7.0, t, y, labeled, temperature=2.0, alpha=0.0), base)


def test_lskd_is_zero_when_the_student_is_a_rescaled_teacher():
    s, t, y, labeled = logits_batch()
    loss = lskd_loss(10.0 * t + 1.0, t, y, labeled, temperature=2.0, alpha=0.0)
    torch.testing.assert_close(loss, torch.tensor(0.0), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- registry and search


def test_all_five_methods_are_searchable_with_sane_default_ranges():
    assert sorted(searchable_method_names()) == sorted(ALL_METHODS)
    for name in searchable_method_names():
        cls = METHODS.get(name)
        assert cls.name == name
        assert cls.space, f"{name} has nothing to search"
        for param, r in cls.space.items():
            assert isinstance(r, ParamRange)
            assert r.low < r.high or (r.fixed and param == "warmup_epochs"), f"{name}.{param}"
            assert not r.log or r.low > 0, f"{name}.{param} is log-scaled from {r.low}"
            if param == "alpha":
                assert 0 <= r.low and r.high <= 1
        assert cls.needs_teacher


def test_feature_methods_declare_that_they_need_features():
    assert {n for n in METHODS.names() if METHODS.get(n).needs_features} == {"cosine", "hint"}


def test_study_spec_accepts_range_overrides_for_the_new_methods():
    spec = spec_from_dict(
        {"search": {"methods": ALL_METHODS}, "methods": {"dkd": {"beta": [1, 8]}, "hint": {"feature_weight": [0.1, 1]}}}
    )
    assert spec.method_space("dkd")["beta"] == ParamRange(1, 8, log=True)
    assert spec.method_space("hint")["feature_weight"].high == 1


def test_each_trial_samples_only_its_methods_params():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = StudySpec(search={"methods": ALL_METHODS})
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    for name in ALL_METHODS:  # make sure every method is drawn at least once
        study.enqueue_trial({"method": name})

    def objective(trial: optuna.Trial) -> float:
        method, params = trial_params(trial, spec)
        return sum(params.values()) + len(method)

    study.optimize(objective, n_trials=30)
    seen = set()
    for trial in study.trials:
        method = trial.params["method"]
        seen.add(method)
        expected = {"method"} | {f"{method}_{p}" for p in spec.method_space(method)}
        assert set(trial.params) == expected, f"trial {trial.number} ({method})"
    assert seen == set(ALL_METHODS)


def test_nckd_ignores_the_target_class_even_for_huge_logits():
    """The target class is masked out of NCKD at any logit scale: finite, and blind to the target logit."""
    from kdsearch.distill.methods import nckd_term

    torch.manual_seed(0)
    student, teacher = torch.randn(4, 5) * 800, torch.randn(4, 5) * 800
    target = torch.tensor([0, 1, 2, 3])
    base = nckd_term(student, teacher, target, temperature=0.5)
    bumped = teacher.clone()
    bumped[torch.arange(4), target] += 5000
    assert torch.isfinite(base)
    assert torch.allclose(nckd_term(student, bumped, target, temperature=0.5), base, rtol=1e-4, atol=1e-4)


def test_warmup_factor_ramps_linearly_to_one_for_floats_and_stacked_tensors():
    """Each case by hand; the tensor branch is the one stacked students take under vmap (one value per student)."""
    from kdsearch.distill.methods import warmup_factor

    for progress, warmup, want in [
        (0.5, 2.0, 0.25),
        (2.0, 2.0, 1.0),
        (3.0, 2.0, 1.0),
        (0.5, 0.0, 1.0),
        (0.5, -1.0, 1.0),
    ]:
        assert warmup_factor(progress, warmup) == pytest.approx(want, abs=0)
        assert isinstance(warmup_factor(progress, warmup), float)
    got = warmup_factor(torch.tensor([0.25, 0.5, 3.0, 1.0, 1.0]), torch.tensor([0.5, 2.0, 2.0, 0.0, -1.0]))
    assert isinstance(got, torch.Tensor)
    assert torch.equal(got, torch.tensor([0.5, 0.25, 1.0, 1.0, 1.0]))
    mixed = warmup_factor(torch.tensor(0.5), 2.0)  # a tensor and a float: a tensor
    assert isinstance(mixed, torch.Tensor) and mixed.item() == 0.25
    assert warmup_factor(0.5, torch.tensor(2.0)).item() == 0.25


def test_standardize_logits_is_a_per_row_z_score_with_the_unbiased_std_and_a_tiny_eps():
    from kdsearch.distill.methods import standardize_logits

    z = standardize_logits(torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]], dtype=torch.float64))
    std = math.sqrt(5 / 3)  # unbiased: sum of squares 5 over n - 1 = 3
    want = torch.tensor([[-1.5, -0.5, 0.5, 1.5]], dtype=torch.float64) / (std + 1e-7)
    assert torch.allclose(z[0:1], want, rtol=0, atol=1e-15)
    assert torch.equal(z[1], torch.zeros(4, dtype=torch.float64))  # a constant row: zeros, not NaN
    tiny = standardize_logits(torch.tensor([[0.0, 1e-7]], dtype=torch.float64))  # std comparable to eps = 1e-7
    s = 1e-7 / math.sqrt(2)
    assert tiny[0, 0].item() == pytest.approx(-0.5e-7 / (s + 1e-7), rel=1e-12)


def test_lskd_loss_is_its_formula_term_by_term():
    """alpha * CE on the labeled rows of the raw student logits + (1 - alpha) * T² * KL(z(t)/T || z(s)/T), by hand."""
    from kdsearch.distill.methods import lskd_loss

    g = torch.Generator().manual_seed(3)
    s, t = (
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        3 * torch.randn(6, 5, generator=g, dtype=torch.float64) + 1,
    )
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    labeled = torch.tensor([True, True, False, True, False, True])
    T, alpha = 2.5, 0.3

    def z(x):
        return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-7)

    hard = F.cross_entropy(s[labeled], labels[labeled])
    p_t = F.softmax(z(t) / T, -1)
    kl = (p_t * (F.log_softmax(z(t) / T, -1) - F.log_softmax(z(s) / T, -1))).sum(-1).mean()
    want = alpha * hard + (1 - alpha) * T**2 * kl
    got = lskd_loss(s, t, labels, labeled, T, alpha)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


def test_dkd_loss_weights_each_term_as_written_and_warms_up_only_when_asked():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    labeled = torch.tensor([True, False, True, True, False, True])
    target = dkd_targets(t, labels, labeled)
    hard = masked_cross_entropy(s, labels, labeled)
    tckd, nckd = tckd_term(s, t, target, 3.0), nckd_term(s, t, target, 3.0)
    got = dkd_loss(s, t, labels, labeled, 3.0, alpha_tckd=0.7, beta=2.5, warmup=0.4)
    assert got.item() == pytest.approx((hard + 0.4 * (0.7 * tckd + 2.5 * nckd)).item(), rel=1e-12)
    params = {"temperature": 3.0, "alpha_tckd": 0.7, "beta": 2.5}  # no warmup_epochs: full strength at once
    batch = DistillBatch(s, labels, labeled, teacher_logits=t, progress=0.5)
    full = dkd_loss(s, t, labels, labeled, 3.0, alpha_tckd=0.7, beta=2.5)
    assert build_method("dkd").loss(batch, params).item() == pytest.approx(full.item(), rel=1e-12)
    ramped = build_method("dkd").loss(batch, {**params, "warmup_epochs": 2.0})  # a quarter of the way
    assert ramped.item() == pytest.approx((hard + 0.25 * (0.7 * tckd + 2.5 * nckd)).item(), rel=1e-12)
    with pytest.raises(ValueError, match=r"method 'dkd' needs DistillBatch\.teacher_logits"):
        build_method("dkd").loss(DistillBatch(s, labels, labeled), params)


def test_hint_says_which_shapes_disagree_and_mixes_precisions_at_the_wider_one():
    with pytest.raises(ValueError, match=r"maps student features \(2, 4, 3, 3\) to \(2, 4, 3, 3\), but the teacher "):
        hint_feature_loss(torch.zeros(2, 4, 3, 3), torch.zeros(2, 6, 3, 3), nn.Identity())
    with pytest.raises(ValueError, match="build it with make_regressor"):
        hint_feature_loss(torch.zeros(2, 4, 3, 3), torch.zeros(2, 6, 3, 3), nn.Identity())
    s = torch.full((2, 3), 1.5, dtype=torch.bfloat16)
    t = torch.full((2, 3), 1.0, dtype=torch.float32)
    for a, b in ((s, t), (t, s)):  # a bf16 student against an fp32 teacher and the other way round
        loss = hint_feature_loss(a, b, nn.Identity())
        assert loss.dtype == torch.float32 and loss.item() == 0.25


def test_hint_regressor_shapes_padding_and_refusals_name_the_side():
    r = HintRegressor((8, 6, 4), (16, 3, 2), kernel_size=3)  # non-square maps: H and W each their own
    assert r(torch.zeros(5, 8, 6, 4)).shape == (5, 16, 3, 2)
    same = HintRegressor((8, 5, 7), (16, 5, 7), kernel_size=3)  # size-preserving 3x3: padding 1
    assert same(torch.zeros(2, 8, 5, 7)).shape == (2, 16, 5, 7) and same.conv.padding == (1, 1)
    for which, shapes in (("student", ((8, 6), (16, 3, 2))), ("teacher", ((8, 6, 4), (16, 3)))):
        with pytest.raises(ValueError, match=rf"the {which} shape is .*\(pass the shape without the batch dimension\)"):
            HintRegressor(*shapes)
    with pytest.raises(ValueError, match="kernel_size must be 1 or 3, not 4"):
        HintRegressor((8, 6, 4), (16, 3, 2), kernel_size=4)


# --------------------------------------------------------------------------- mutmut survivors (issue 18)


def test_kd_loss_adds_its_two_terms_at_a_mixed_alpha():
    """``alpha * CE + (1 - alpha) * T² KL``, checked by hand at alpha = 0.3 (alpha 0 and 1 hide the sign)."""
    s, t, y, labeled = logits_batch()
    hard = F.cross_entropy(s[labeled], y[labeled])
    soft = F.kl_div(F.log_softmax(s / 3.0, -1), F.log_softmax(t / 3.0, -1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(kd_loss(s, t, y, labeled, 3.0, alpha=0.3), 0.3 * hard + 0.7 * 9.0 * soft)


def test_masked_cross_entropy_of_a_single_labeled_row_is_that_rows_ce():
    s, _, y, _ = logits_batch()
    one = torch.zeros(len(y), dtype=torch.bool)
    one[3] = True
    torch.testing.assert_close(masked_cross_entropy(s, y, one), F.cross_entropy(s[3:4], y[3:4]))


@pytest.mark.parametrize("name", ["cosine", "hint"])
def test_a_feature_methods_loss_is_ce_plus_its_weighted_feature_term(name):
    student = TinyStudent()
    batch = student_batch(student)
    method = build_method(name)
    regressor = method.make_regressor((4, 8, 8), (6, 4, 4)) if name == "hint" else None
    hard = masked_cross_entropy(batch.student_logits, batch.labels, batch.labeled)
    feature = method.feature_loss(batch.student_features, batch.teacher_features, regressor)
    for weight in (0.5, 3.0):
        got = method.loss(batch, {"feature_weight": weight}, regressor=regressor)
        torch.testing.assert_close(got, hard + weight * feature)


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("kd", "teacher_logits"),
        ("pseudo_label", "teacher_logits"),
        ("cosine", "student_features"),
        ("cosine", "teacher_features"),
    ],
)
def test_a_missing_input_is_named_with_its_method_and_where_to_look(name, field):
    batch = student_batch(TinyStudent())
    setattr(batch, field, None)
    params = mid_params(build_method(name).space)
    with pytest.raises(ValueError) as err:
        build_method(name).loss(batch, params)
    assert str(err.value) == (
        f"method {name!r} needs DistillBatch.{field}, which is None; the training loop must provide it "
        "(see needs_teacher / needs_features in kdsearch.distill.methods)"
    )


def test_warmup_factor_mixes_a_tensor_with_a_float_and_a_zero_warmup_tensor_is_one():
    from kdsearch.distill.methods import warmup_factor

    got = warmup_factor(torch.tensor([0.5, 2.0]), 1.0)  # stacked progress, one warm-up for all
    assert isinstance(got, torch.Tensor) and got.tolist() == [0.5, 1.0]
    got = warmup_factor(0.5, torch.tensor([1.0, 2.0]))
    assert isinstance(got, torch.Tensor) and got.tolist() == [0.5, 0.25]
    assert warmup_factor(torch.tensor([0.0]), torch.tensor([0.0])).tolist() == [1.0]  # no warm-up, even at step 0


def test_the_reasons_a_method_is_unusable_on_few_classes_are_said_whole():
    from kdsearch.distill.methods import unusable_methods

    assert unusable_methods(["kd", "lskd", "dkd", "cosine"], 2) == {
        "lskd": "the z-scores of two logits are always ±1/√2, so its soft term has no gradient",
        "dkd": "its non-target distribution has a single class, so NCKD is 0 and beta does nothing (dkd is kd)",
    }
    assert unusable_methods(["kd", "lskd", "dkd"], 3) == {}


def test_unusable_methods_names_the_classes_a_registered_method_needs(monkeypatch):
    from kdsearch.distill.methods import Method, unusable_methods

    class Wide(Method):
        name = "wide"
        min_classes = 7

    monkeypatch.setitem(METHODS._entries, "wide", Wide)  # registered for this test only
    assert unusable_methods(["wide"], 5) == {"wide": "it needs at least 7 classes"}


def test_hint_without_its_regressor_says_how_to_build_and_pass_it():
    batch = student_batch(TinyStudent())
    with pytest.raises(ValueError) as err:
        build_method("hint").loss(batch, {"feature_weight": 1.0})
    assert str(err.value).startswith(
        "method 'hint' needs its regressor: build it with make_regressor(student_shape, teacher_shape), "
        "train it with the student, and pass it as loss(..., regressor=...)"
    )
