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


def dropout_student() -> nn.Module:
    """``student`` with dropout (plain and channel-wise) between its layers."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Dropout2d(0.2),
        nn.Flatten(),
        nn.Linear(6 * 100, 32),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(32, CLASSES),
    )


def test_a_stacked_trial_with_dropout_is_the_same_at_any_stack_size_and_neighbours(task):
    """Dropout masks are the member's own (seed, step): alone in a stack of 1 or beside two other students, joining
    at another moment, member "t" gives the same per-epoch values."""
    train, val = task
    torch.set_default_dtype(torch.float64)
    try:
        x64 = TrainSet(train.x.double(), train.y, train.labeled, train.teacher_logits.double())
        val64 = Split(val.x.double(), val.y)

        def history(neighbours: list[tuple[str, int]], join_after: int) -> list:
            stack = StudentStack(dropout_student(), val64, batch_size=32, lr=1e-3, steps=6, device=torch.device("cpu"))
            out = []
            for key, seed in neighbours:
                torch.manual_seed(seed)
                stack.add(key, dropout_student(), plan("dkd", CONFIGS[2][1], seed, x64))
            for _ in range(join_after):
                stack.run_epoch()
            torch.manual_seed(21)
            stack.add("t", dropout_student(), plan("kd", CONFIGS[0][1], 21, x64))
            torch.manual_seed(12345)  # the global RNG, which the masks must not read
            for _ in range(3):
                out.append(stack.run_epoch()["t"])
            return out

        single = history([], 0)
        crowded = history([("a", 3), ("b", 4)], 1)
        for a, b in zip(single, crowded):
            assert_same(a, b, 1e-9)
        dropped = history([], 0)
        assert [r.train_loss for r in dropped] == [r.train_loss for r in single]  # and re-runs exactly
    finally:
        torch.set_default_dtype(torch.float32)


def test_member_dropout_masks_have_the_rate_and_differ_between_members_and_steps():
    from kdsearch.distill.stacked import member_uniform

    keys = [torch.tensor([s, t]) for s in (0, 1) for t in (0, 1)]
    draws = [member_uniform(k, 0, (4000,), torch.device("cpu")) for k in keys]
    for u in draws:
        assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
        assert float((u < 0.3).double().mean()) == pytest.approx(0.3, abs=0.03)
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            assert not torch.equal(draws[i] < 0.3, draws[j] < 0.3)
    assert not torch.equal(member_uniform(keys[0], 1, (4000,), torch.device("cpu")), draws[0])  # another layer


class TiedAndNonPersistent(nn.Module):
    """A student with tied weights (the head reuses the embedding's matrix) and a non-persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.proj = nn.Linear(144, CLASSES, bias=False)
        self.mix = nn.Linear(CLASSES, CLASSES)
        self.out = nn.Linear(CLASSES, CLASSES)
        self.out.weight = self.mix.weight  # tied
        self.register_buffer("scale", torch.tensor(0.5), persistent=False)

    def forward(self, x):
        return self.out(torch.relu(self.mix(self.proj(self.flat(x)) * self.scale)))


def test_member_model_takes_tied_weights_and_non_persistent_buffers(task):
    train, val = task
    stack = StudentStack(TiedAndNonPersistent(), val, batch_size=32, lr=1e-3, steps=6, device=torch.device("cpu"))
    for key, seed in ((0, 1), (1, 2)):
        torch.manual_seed(seed)
        stack.add(key, TiedAndNonPersistent(), plan("kd", CONFIGS[0][1], seed, train))
    stack.run_epoch()
    model = stack.member_model(1, TiedAndNonPersistent()).eval()
    assert model.out.weight is model.mix.weight
    with torch.no_grad():
        expected = torch.func.functional_call(
            stack.base.eval(),
            ({k: v[1] for k, v in stack.params.items()}, {k: v[1] for k, v in stack.buffers.items()}),
            (val.x,),
        )
        assert torch.allclose(model(val.x), expected, atol=1e-6)


def test_a_stack_refuses_a_plan_with_other_steps_per_epoch(task):
    train, val = task
    stack = new_stack(val)
    with pytest.raises(ValueError, match="6 steps per epoch cannot take a student planned with 3"):
        stack.add(0, student(), plan("kd", CONFIGS[0][1], 1, train, steps=3))


def test_out_of_memory_mid_epoch_halves_the_stack_and_changes_no_result(task, monkeypatch):
    """An epoch that runs out of memory starts again from its boundary, two members at a time: every member's
    values are those of the stack that fit, and the caller is told the new size."""
    train, val = task
    torch.set_default_dtype(torch.float64)
    try:
        x64 = TrainSet(train.x.double(), train.y, train.labeled, train.teacher_logits.double())
        val64 = Split(val.x.double(), val.y)

        def stack_of_four() -> StudentStack:
            stack = StudentStack(dropout_student(), val64, batch_size=32, lr=1e-3, steps=6, device=torch.device("cpu"))
            for key in range(4):
                torch.manual_seed(key)
                stack.add(key, dropout_student(), plan(*CONFIGS[key % 3][:2], key, x64))
            return stack

        fits = stack_of_four()
        expected = [fits.run_epoch() for _ in range(2)]

        real = StudentStack._epoch_of_all
        calls = []

        def tight(self):
            calls.append(len(self.members))
            if len(self.members) > 2 and len(calls) > 1:  # the second epoch at K = 4 runs out, after some steps
                for p in self.params.values():
                    p.data.add_(1.0)  # half-done work, which the restart must undo
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(self)

        monkeypatch.setattr(StudentStack, "_epoch_of_all", tight)
        told = []
        shrinking = stack_of_four()
        shrinking.on_shrink = told.append
        got = [shrinking.run_epoch() for _ in range(2)]

        assert told == [2] and calls == [4, 4, 2, 2]
        for e in range(2):
            for key in range(4):
                assert_same(got[e][key], expected[e][key], 1e-9)
        for name, value in fits.params.items():
            assert torch.allclose(shrinking.params[name], value, atol=1e-9)
    finally:
        torch.set_default_dtype(torch.float32)


def test_an_error_other_than_out_of_memory_is_not_retried(task, monkeypatch):
    train, val = task
    stack = new_stack(val)
    add(stack, 0, "kd", CONFIGS[0][1], 1, train)
    monkeypatch.setattr(StudentStack, "_epoch_of_all", lambda self: (_ for _ in ()).throw(RuntimeError("bad op")))
    with pytest.raises(RuntimeError, match="bad op"):
        stack.run_epoch()
