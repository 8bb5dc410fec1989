"""What each candidate student costs to run, measured once per study: parameters, FLOPs, saved size, and
latency (batch 1) and throughput (batch 64) in PyTorch and in ONNX Runtime on this machine's CPU, plus PyTorch
latency on the study's GPU when it has one. Timings are medians of repeated runs after warm-up
(``median_seconds``), and the record says on what hardware they were taken.

The first process of a study measures and stores them (``results.StudentCosts``, study user attr
``student_costs``); later runs and workers read the stored figures, so every worker applies the same budgets
(``search.constraints``) and the report shows one set of numbers.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..distill.metrics import count_parameters, flops_per_image, size_mb
from ..errors import KdsearchError, first_line
from ..search.results import StudentCost, StudentCosts
from .export import write_onnx

WARMUP = 3  # untimed runs before the timed ones (allocations, ONNX Runtime's first-run graph work)
REPEATS = 15  # timed runs at batch 1; throughput at batch 64 takes a third as many
THROUGHPUT_BATCH = 64


def median_seconds(
    run: Callable[[], object],
    *,
    warmup: int = WARMUP,
    repeats: int = REPEATS,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median wall time of ``repeats`` calls of ``run`` after ``warmup`` untimed ones (``clock``: seconds)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = clock()
        run()
        times.append(clock() - start)
    return statistics.median(times)


def hardware() -> str:
    """This machine in a few words: the CPU's model name, its core count and torch's thread count."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _torch_timings(model: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(latency ms at batch 1, images/s at batch 64) of ``model`` on ``x``'s device, eval mode, no autograd."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    one, many = x[:1], x[:1].expand(THROUGHPUT_BATCH, *x.shape[1:]).contiguous()

    def forward(batch: torch.Tensor) -> Callable[[], object]:
        def run() -> None:
            model(batch)
            sync()

        return run

    with torch.inference_mode():
        latency = median_seconds(forward(one), repeats=repeats) * 1e3
        rate = THROUGHPUT_BATCH / median_seconds(forward(many), repeats=max(repeats // 3, 1))
    return latency, rate


def _onnx_timings(model: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(latency ms at batch 1, images/s at batch 64) in ONNX Runtime's CPU provider, from a temporary ONNX file."""
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="kdsearch-cost-") as tmp:
        path = Path(tmp) / "student.onnx"
        write_onnx(model, x[:2], path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    one = x[:1].numpy()
    many = x[:1].expand(THROUGHPUT_BATCH, *x.shape[1:]).contiguous().numpy()
    latency = median_seconds(lambda: session.run(None, {name: one}), repeats=repeats) * 1e3
    rate = THROUGHPUT_BATCH / median_seconds(lambda: session.run(None, {name: many}), repeats=max(repeats // 3, 1))
    return latency, rate


def measure_cost(
    model: nn.Module,
    sample: torch.Tensor,
    *,
    device: torch.device | None = None,
    repeats: int = REPEATS,
    arch: str = "",
    arch_args: Mapping | None = None,
) -> StudentCost:
    """``model``'s ``StudentCost`` on one image like ``sample``: counts, then CPU timings in PyTorch and ONNX
    Runtime (an architecture that does not export to ONNX gets ``onnx_error`` instead), then PyTorch latency on
    ``device`` when it is a GPU. The caller's model is not changed."""
    cpu = copy.deepcopy(model).cpu().float().eval()
    x = sample[:1].detach().cpu().float().contiguous()
    latency, rate = _torch_timings(cpu, x, repeats)
    onnx_latency = onnx_rate = onnx_error = None
    try:
        onnx_latency, onnx_rate = _onnx_timings(cpu, x, repeats)
    except KdsearchError as err:
        onnx_error = first_line(err)
    device_latency = None
    if device is not None and device.type == "cuda":
        on_device = copy.deepcopy(cpu).to(device)
        device_latency, _ = _torch_timings(on_device, x.to(device), repeats)
    return StudentCost(
        arch=arch,
        arch_args=dict(arch_args or {}),
        params=count_parameters(cpu),
        size_mb=size_mb(cpu),
        flops=flops_per_image(cpu, x),
        latency_ms=latency,
        throughput=rate,
        onnx_latency_ms=onnx_latency,
        onnx_throughput=onnx_rate,
        device_latency_ms=device_latency,
        onnx_error=onnx_error,
    )


def study_costs(study, data, *, echo: Callable[[str], None] = print, repeats: int = REPEATS) -> StudentCosts:
    """The costs of ``data``'s candidate students and of its teacher: read from ``study`` when it holds them all,
    else measured (only the missing ones), stored and read back (a worker that measured at the same moment
    wins or loses as a whole: every process then uses the stored figures). ``study`` None: measured, not stored."""
    from ..search.objective import fresh_student

    stored = StudentCosts.read(study) if study is not None else None
    names = list(data.students)
    if stored is not None and stored.teacher is not None and all(n in stored.students for n in names):
        return stored
    echo(f"costs: measuring {len(names)} candidate students and the teacher (medians of {repeats} timings, CPU)")
    sample = data.val.x[:1].float()
    students = dict(stored.students) if stored is not None else {}
    for name in names:
        if name in students:
            continue
        variant = data.for_student(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = fresh_student(variant)
        s = variant.spec.student
        students[name] = measure_cost(
            model, sample, device=data.device, repeats=repeats, arch=s.arch, arch_args=s.arch_args
        )
    teacher = stored.teacher if stored is not None and stored.teacher is not None else None
    if teacher is None:
        t = data.spec.teacher
        try:
            teacher = measure_cost(
                data.teacher.model, sample, device=data.device, repeats=repeats, arch=t.arch, arch_args=t.arch_args
            )
        except (RuntimeError, TypeError) as err:  # e.g. a torch.export program cannot be copied or timed on the CPU
            echo(f"costs: the teacher's cost is not measured ({first_line(err)})")
    costs = StudentCosts(hardware=hardware(), repeats=repeats, teacher=teacher, students=students)
    if study is None:
        return costs
    latest = StudentCosts.read(study)  # another worker may have stored them meanwhile: theirs stand
    if latest is None or not all(n in latest.students for n in names):
        costs.save(study)
        latest = StudentCosts.read(study)
    return latest or costs
