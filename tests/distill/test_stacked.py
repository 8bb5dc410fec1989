"""Stacked training (stacked.py): K students in lock-step give what each gives alone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from kdsearch.data import Split
from kdsearch.distill.methods import build_method
from kdsearch.distill.stacked import StudentStack, probe, stack_refusal
from kdsearch.distill.train import Augment, LiveTeacher, TrainSet, TrialPlan, fit

CLASSES = 4
CONFIGS = [
    ("kd", {"temperature": 4.0, "alpha": 0.3}, 11),
    ("lskd", {"temperature": 2.0, "alpha": 0.01}, 12),
    ("dkd", {"temperature": 4.0, "alpha_tckd": 1.0, "beta": 8.0, "warmup_epochs": 1.0}, 13),
]


def student() -> nn.Module:
    """A small conv student with BatchNorm (no bias before it: a parameter without gradient would make Adam amplify
    rounding noise in both paths) and no dropout, so stacked and alone can be compared value by value."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(6 * 100, 32),
        nn.ReLU(),
        nn.Linear(32, CLASSES),
    )


@pytest.fixture
def task() -> tuple[TrainSet, Split]:
    g = torch.Generator().manual_seed(0)
    n = 192
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randn(n, 1, 12, 12, generator=g) + 0.3 * y[:, None, None, None]
    teacher = torch.randn(n, CLASSES, generator=g) * 2 + 2 * nn.functional.one_hot(y, CLASSES)
    train = TrainSet(x, y, torch.arange(n) < 120, teacher.float())
    return train, Split(x[:64].clone(), y[:64].clone())


def plan(method: str, params: dict, seed: int, train: TrainSet, epochs: int = 2, **more) -> TrialPlan:
    return TrialPlan(build_method(method), params, seed, train, epochs=epochs, batch_size=32, lr=1e-3, **more)


def alone(method: str, params: dict, seed: int, train: TrainSet, val: Split, epochs: int = 2):
    torch.manual_seed(seed)
    model = student()
    history = fit(model, plan(method, params, seed, train, epochs), val)
    return model, history


def new_stack(val: Split) -> StudentStack:
    return StudentStack(student(), val, batch_size=32, lr=1e-3, steps=6, device=torch.device("cpu"))


def add(stack: StudentStack, key, method: str, params: dict, seed: int, train: TrainSet) -> None:
    torch.manual_seed(seed)
    stack.add(key, student(), plan(method, params, seed, train))


def assert_same(a, b, tol: float) -> None:
    assert a.epoch == b.epoch
    assert a.accuracy == pytest.approx(b.accuracy, abs=tol)
    assert a.auc == pytest.approx(b.auc, abs=tol)
    assert a.train_loss == pytest.approx(b.train_loss, abs=tol, rel=tol)


def assert_stack_matches(configs, expected, train: TrainSet, val: Split, tol: float) -> StudentStack:
    """Train ``configs`` (method, params, seed) as one stack for two epochs; each epoch of each member must match
    ``expected[i]``, its history alone, within ``tol``. Returns the stack."""
    stack = new_stack(val)
    for i, (m, p, s) in enumerate(configs):
        add(stack, i, m, p, s, train)
    for epoch in range(2):
        results = stack.run_epoch()
        for i in range(len(configs)):
            assert_same(results[i], expected[i][epoch], tol)
    return stack


def test_a_stack_of_kd_lskd_and_dkd_gives_each_member_its_values_alone(task):
    train, val = task
    torch.set_default_dtype(torch.float64)  # models in float64: no ReLU flips from rounding differences
    try:
        train64 = TrainSet(train.x.double(), train.y, train.labeled, train.teacher_logits)
        val64 = Split(val.x.double(), val.y)
        expected = [alone(m, p, s, train64, val64) for m, p, s in CONFIGS]
        stack = assert_stack_matches(CONFIGS, [h for _, h in expected], train64, val64, 1e-6)
        for i in range(len(CONFIGS)):
            got = stack.member_model(i, student()).state_dict()
            for name, value in expected[i][0].state_dict().items():
                assert torch.allclose(got[name].double(), value.double(), atol=1e-6), name
    finally:
        torch.set_default_dtype(torch.float32)


def test_fp32_stack_matches_alone_within_1e_4(task):
    train, val = task
    configs = [CONFIGS[0], CONFIGS[1], ("kd", {"temperature": 1.0, "alpha": 0.9}, 14)]
    assert_stack_matches(configs, [alone(m, p, s, train, val)[1] for m, p, s in configs], train, val, 1e-4)


def test_a_member_leaving_or_joining_mid_stack_changes_nothing_for_the_others(task):
    train, val = task
    torch.set_default_dtype(torch.float64)
    try:
        train64 = TrainSet(train.x.double(), train.y, train.labeled, train.teacher_logits)
        val64 = Split(val.x.double(), val.y)
        expected = [alone(m, p, s, train64, val64)[1] for m, p, s in CONFIGS]
        late = ("kd", {"temperature": 8.0, "alpha": 0.5}, 21)
        late_expected = alone(*late, train64, val64)[1]
        stack = new_stack(val64)
        for i, (m, p, s) in enumerate(CONFIGS):
            add(stack, i, m, p, s, train64)
        stack.run_epoch()
        history = stack.remove(1)  # pruned after epoch 1
        assert [r.epoch for r in history] == [1]
        add(stack, "late", *late, train64)  # a new trial takes the slot at the boundary
        results = stack.run_epoch()
        assert set(results) == {0, 2, "late"}
        assert_same(results[0], expected[0][1], 1e-6)
        assert_same(results[2], expected[2][1], 1e-6)
        assert_same(results["late"], late_expected[0], 1e-6)  # its first epoch, its own Adam step count
        results = stack.run_epoch()
        assert_same(results["late"], late_expected[1], 1e-6)
    finally:
        torch.set_default_dtype(torch.float32)


def test_batchnorm_members_keep_their_own_running_statistics(task):
    train, val = task
    stack = new_stack(val)
    for i, (m, p, s) in enumerate(CONFIGS):
        add(stack, i, m, p, s, train)
    results = stack.run_epoch()
    means = stack.buffers["1.running_mean"]
    assert means.shape == (3, 6)
    assert not torch.allclose(means[0], means[1]) and not torch.allclose(means[1], means[2])
    for i in range(3):
        model = stack.member_model(i, student()).eval()
        assert torch.equal(model[1].running_mean, means[i])
        with torch.no_grad():
            accuracy = (model(val.x).argmax(1) == val.y).float().mean().item()
        assert accuracy == pytest.approx(results[i].accuracy, abs=1e-6)  # eval used member i's statistics


class Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot batch it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(144, CLASSES)

    def forward(self, x):
        h = self.fc(x.flatten(1))
        if h.sum() > 0:
            return h
        return -h


def test_a_student_that_cannot_stack_is_refused_with_a_reason(task):
    train, val = task
    kd = plan("kd", {"temperature": 2.0, "alpha": 0.5}, 0, train)
    reason = probe(Branchy(), kd, val)
    assert reason and "data-dependent" in reason.lower()
    assert probe(student(), kd, val) is None
    assert "feature maps" in stack_refusal(plan("hint", {"feature_weight": 1.0}, 0, train))
    assert "consistent" in stack_refusal(replace(kd, live_teacher=LiveTeacher(student())))
    # an augmented scratch (the baseline of a 'consistent' winner) is not stacked: the stack does not augment
    assert "augmented" in stack_refusal(plan("scratch", {}, 0, train, augment=Augment(2, True)))
    assert stack_refusal(plan("lskd", {"temperature": 2.0, "alpha": 0.1}, 0, train)) is None
    small = TrainSet(train.x[:10], train.y[:10], train.labeled[:10], train.teacher_logits[:10])
    assert "fewer than one batch" in stack_refusal(plan("kd", {"temperature": 2.0, "alpha": 0.5}, 0, small))


def test_members_must_share_the_batch_size(task):
    train, val = task
    stack = new_stack(val)
    add(stack, 0, "kd", CONFIGS[0][1], 1, train)
    small = TrainSet(train.x[:10], train.y[:10], train.labeled[:10], train.teacher_logits[:10])
    with pytest.raises(ValueError, match="same batch size"):
        add(stack, 1, "kd", CONFIGS[0][1], 2, small)


def test_scratch_members_stack_without_teacher_logits(task):
    train, val = task
    labeled = TrainSet(train.x[:120], train.y[:120], torch.ones(120, dtype=torch.bool))
    expected = alone("scratch", {}, 5, labeled, val, epochs=1)[1]  # 120 rows: 3 steps of 32
    stack = StudentStack(student(), val, batch_size=32, lr=1e-3, steps=3, device=torch.device("cpu"))
    for key, seed in (("a", 5), ("b", 6)):
        add(stack, key, "scratch", {}, seed, labeled)
    assert_same(stack.run_epoch()["a"], expected[0], 1e-4)
