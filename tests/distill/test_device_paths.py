"""Device paths: a CUDA device turns TF32 on, CPU runs are left as they were, host→device copies are pinned and
non-blocking, and ``runtime.compile`` trains the same student as eager, compiled once for every trial."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsearch.config.load import apply_overrides, spec_from_dict
from kdsearch.config.spec import StudySpec
from kdsearch.data import Split, to_device
from kdsearch.distill.methods import build_method
from kdsearch.distill.train import TrainSet, TrialPlan, enable_tf32, fit, resolve_device
from kdsearch.errors import KdsearchError


def tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def tf32_off():
    """TF32 flags off for the test, restored afterwards (torch's flag objects do not suit monkeypatch)."""
    saved = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def one_gpu(monkeypatch):
    """This machine seen as having one CUDA device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "auto"])
def test_resolving_a_cuda_device_turns_tf32_on(tf32_off, one_gpu, name):
    assert resolve_device(name) == torch.device("cuda", 0 if name == "cuda:0" else None)
    assert tf32_flags() == (True, True)


@pytest.mark.parametrize("name", ["cpu", "auto"])
def test_a_cpu_run_leaves_tf32_as_it_was(tf32_off, monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(name) == torch.device("cpu")
    assert tf32_flags() == (False, False)


def test_enable_tf32_sets_matmul_and_conv_flags(tf32_off):
    enable_tf32()
    enable_tf32()  # idempotent
    assert tf32_flags() == (True, True)
    assert torch.get_float32_matmul_precision() == "high"


def train_set(n: int = 64, classes: int = 3, seed: int = 0) -> TrainSet:
    g = torch.Generator().manual_seed(seed)
    return TrainSet(
        torch.randn(n, 1, 8, 8, generator=g),
        torch.randint(0, classes, (n,), generator=g),
        torch.ones(n, dtype=torch.bool),
        torch.randn(n, classes, generator=g),
    )


def test_moving_data_to_the_cpu_keeps_the_tensors_it_has():
    ts = train_set()
    moved = ts.to(torch.device("cpu"))
    assert moved.y is ts.y and moved.labeled is ts.labeled and moved.teacher_logits is ts.teacher_logits
    assert torch.equal(moved.x, ts.x) and moved.x.is_contiguous(memory_format=torch.channels_last)
    split = Split(ts.x, ts.y)
    on_cpu = split.to("cpu")
    assert on_cpu.x is split.x and on_cpu.y is split.y
    assert to_device(ts.y, torch.device("cpu")) is ts.y


class RecordingTensor:
    """Stands in for a CPU tensor and records how it is copied (this machine has no CUDA)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.calls: list[tuple] = []

    def pin_memory(self) -> "RecordingTensor":
        self.calls.append(("pin_memory",))
        return self

    def to(self, device, non_blocking: bool = False) -> "RecordingTensor":
        self.calls.append(("to", torch.device(device), non_blocking))
        return self


def test_a_cpu_tensor_bound_for_cuda_is_pinned_and_copied_without_blocking():
    t = RecordingTensor("cpu")
    to_device(t, torch.device("cuda"))
    assert t.calls == [("pin_memory",), ("to", torch.device("cuda"), True)]


def test_a_tensor_already_on_the_device_is_not_pinned():
    t = RecordingTensor("cuda")
    to_device(t, torch.device("cuda"))
    assert t.calls == [("to", torch.device("cuda"), False)]


def test_trainset_to_cuda_sends_every_tensor_through_the_pinned_copy(monkeypatch):
    sent: list[torch.Tensor] = []

    def record(t, device):
        assert device == torch.device("cuda")
        sent.append(t)
        return t  # stays on the CPU: this machine has no CUDA

    monkeypatch.setattr("kdsearch.distill.train.to_device", record)
    ts = train_set()
    ts.to(torch.device("cuda"))
    assert [id(t) for t in sent] == [id(ts.x), id(ts.y), id(ts.labeled), id(ts.teacher_logits)]


def test_runtime_compile_is_off_unless_set():
    assert StudySpec().runtime.compile is False
    raw = StudySpec().model_dump(mode="json")
    assert spec_from_dict(apply_overrides(raw, ["runtime.compile=true"])).runtime.compile is True


def tiny_student() -> nn.Module:
    """Conv, BatchNorm, linear. The conv has no bias: before BatchNorm its gradient is round-off alone, which Adam
    would blow up into steps of ``lr`` in either direction, eager and compiled apart."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)
    )


def train_tiny(train: TrainSet, val: Split, seed: int, *, compile: bool):
    torch.manual_seed(seed)
    plan = TrialPlan(
        build_method("kd"),
        {"temperature": 4.0, "alpha": 0.5},
        seed,
        train,
        epochs=3,
        batch_size=32,
        lr=1e-2,
        compile=compile,
    )
    return fit(tiny_student(), plan, val)


def test_a_student_that_cannot_compile_names_runtime_compile(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    def fails(model, x):
        raise BackendCompilerFailed(lambda gm, inputs: None, RuntimeError("no working C++ compiler"), None)

    monkeypatch.setattr("kdsearch.distill.train.compiled_forward", lambda: fails)
    ts = train_set()
    with pytest.raises(KdsearchError, match=r"runtime\.compile = true.*runtime\.compile = false"):
        train_tiny(ts, Split(ts.x, ts.y), 0, compile=True)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_compiles_once_for_every_trial():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    ts = train_set(n=256)
    g = torch.Generator().manual_seed(1)
    val = Split(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g))
    eager = train_tiny(ts, val, 0, compile=False)
    graphs = counters["stats"]["unique_graphs"]
    compiled = train_tiny(ts, val, 0, compile=True)
    assert counters["stats"]["unique_graphs"] == graphs + 1  # compiled: one graph
    for e, c in zip(eager, compiled, strict=True):
        assert c.epoch == e.epoch
        assert c.accuracy == pytest.approx(e.accuracy, abs=1e-4)
        assert c.auc == pytest.approx(e.auc, abs=1e-4)
        assert c.train_loss == pytest.approx(e.train_loss, abs=1e-4)
    train_tiny(ts, val, 1, compile=True)  # the next trial: a new student of the same architecture
    assert counters["stats"]["unique_graphs"] == graphs + 1  # no recompile
