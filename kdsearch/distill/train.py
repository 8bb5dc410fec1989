"""The fast training loop: device-resident tensors, index batching, cached teacher logits.

``fit`` knows nothing about Optuna: it calls ``on_epoch`` after each epoch, and a callback that
raises (e.g. ``optuna.TrialPruned``) stops training.

Precision, step by step (CPU: float32 throughout). On CUDA: the training forward and loss run under
bf16 autocast (``_autocast``), the weights, gradients and Adam state stay float32; evaluation (``predict``)
and the teacher outputs cached from it are float32, never autocast; float32 matrix products and
convolutions may use TF32 (``enable_tf32``, turned on when ``resolve_device`` resolves a CUDA device).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import ImageStore, Split, to_device
from ..errors import KdsearchError, first_line, out_of_memory
from ..nets.models import FeatureTap
from ..signals import raise_if_stop_requested
from .methods import DistillBatch, Method
from .metrics import accuracy, auc


@dataclass
class TrainSet:
    """The images a student trains on, resident on one device (or streamed from disk: ``x`` an ``ImageStore``).

    ``labeled`` marks the rows whose labels the loss may use; ``teacher_logits`` and
    ``teacher_features`` are cached teacher outputs for the same rows (None when the method
    needs none, or when the teacher runs live).
    """

    x: Tensor | ImageStore
    y: Tensor
    labeled: Tensor
    teacher_logits: Tensor | None = None
    teacher_features: Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> "TrainSet":
        """These rows on ``device``, images channels-last. CPU tensors bound for CUDA are copied from pinned
        memory without blocking (``data.to_device``); tensors already there are kept as they are; a streamed
        ``x`` stays a store whose batches land on ``device``."""

        device = torch.device(device)

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else to_device(t, device)

        x = self.x.to(device) if isinstance(self.x, ImageStore) else move(self.x)
        return TrainSet(
            channels_last(x),
            move(self.y),
            move(self.labeled),
            move(self.teacher_logits),
            move(self.teacher_features),
        )


def channels_last(x: Tensor) -> Tensor:
    """Image batches in channels-last memory order (2-3x faster convolutions on CPU here); other tensors as they are."""
    if isinstance(x, ImageStore):  # its batches are made channels-last as they are decoded
        return x
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@dataclass
class LiveTeacher:
    """A teacher run on every batch (``consistent`` mode, or features too large to cache)."""

    model: nn.Module
    feature_layer: str | None = None  # tap this layer when the method needs features


@dataclass
class Augment:
    """Batched on-device augmentation: random shifts of up to ``shift`` pixels, optional flips."""

    shift: int = 2
    flip: bool = True


def augment_batch(x: Tensor, aug: Augment, generator: torch.Generator) -> Tensor:
    """Randomly shift (replicate-padded crop) and flip each image of an N×C×H×W batch, all at once."""
    n, c, h, w = x.shape
    out = x
    if aug.shift:
        p = aug.shift
        padded = F.pad(x, (p, p, p, p), mode="replicate")
        oy = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=x.device)
        ox = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=x.device)
        rows = (oy + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        out = padded[batch, chan, rows, cols]
    if aug.flip:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


@dataclass(frozen=True)
class TrialPlan:
    """How one student trains, decided once (``search.plan_trial`` for a trial or a final-comparison seed,
    ``teacher.train_teacher`` for the teacher) and read by ``fit`` and by a stack of students
    (``stacked.StudentStack.add``).

    ``seed`` fixes the batch order and augmentation (the caller builds the student's initial weights under it);
    ``train`` holds the rows it learns from, with the teacher's cached outputs unless ``live_teacher`` runs on
    every (possibly ``augment``-ed) batch; ``steps`` per epoch defaults to one pass over ``train``; feature
    methods read the student's ``student_layer``; ``compile`` runs its forward and backward through
    ``torch.compile``.
    """

    method: Method
    params: Mapping[str, float]
    seed: int
    train: TrainSet
    epochs: int
    batch_size: int
    lr: float
    steps: int | None = None
    live_teacher: LiveTeacher | None = None
    augment: Augment | None = None
    student_layer: str | None = None
    compile: bool = False

    @property
    def steps_per_epoch(self) -> int:
        return self.steps or steps_per_epoch(len(self.train), self.batch_size)


@dataclass
class EpochResult:
    epoch: int  # 1-based
    accuracy: float
    auc: float
    train_loss: float


def enable_tf32() -> None:
    """Let float32 matrix products (cuBLAS) and convolutions (cuDNN) on CUDA run on TF32 tensor cores.

    TF32 keeps float32's range and float32 accumulation, with 10-bit mantissa inputs (bf16: 7): several
    times the float32 throughput, while results stay float32 (``predict``'s logits keep their ranks apart).
    Process-wide and idempotent; ``resolve_device`` calls it when it resolves a CUDA device. CPU ops
    ignore these flags.
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu; 'cpu', 'cuda', 'cuda:N' as given, checked against this machine.

    A CUDA device also turns TF32 on for this process (``enable_tf32``); a CPU device changes nothing.
    """
    device = _named_device(name)
    if device.type == "cuda":
        enable_tf32()
    return device


def _named_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KdsearchError(
            f"runtime.device = {name!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise KdsearchError(
                f"runtime.device = {name!r} but this machine has {count} visible CUDA device(s); use --device cpu"
                + (f" or cuda:0..cuda:{count - 1}" if count else "")
            )
    elif device.type != "cpu":
        raise KdsearchError(f"runtime.device = {name!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def configure_threads(threads: int) -> int:
    """Set torch's CPU threads (0: all cores this process may use); returns the count set."""
    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches in one pass over ``n`` rows (at least one)."""
    return max(1, n // min(batch_size, n))


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Tensor:
    """``steps`` × ``batch_size`` row indices: shuffled passes over ``range(n)`` laid end to end."""
    batch_size = min(batch_size, n)
    passes = math.ceil(steps * batch_size / n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])
    return order[: steps * batch_size].view(steps, batch_size)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (for timings: CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The precision of a training step's forward and loss: bf16 autocast on CUDA (matmuls and convolutions
    in bf16, softmaxes, norms and reductions in float32; the weights and their gradients stay float32, no
    loss scaling needed with bf16's range); float32 (nothing) on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict(model: nn.Module, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """Logits of ``model`` on ``x`` (a tensor, or an ``ImageStore`` decoded chunk by chunk) in eval mode, as float32 on x's device.

    Always computed in float32, also on CUDA (no autocast): bf16 logits tie AUC ranks and coarsen the
    cached soft targets every trial learns from. Its matmuls and convolutions may use TF32 on CUDA
    (``enable_tf32``), which rounds their inputs, not the float32 result. Never compiled: it runs eager.
    """
    model.eval().to(memory_format=torch.channels_last)
    out = []
    for chunk in x.split(batch_size):
        raise_if_stop_requested()
        out.append(model(channels_last(chunk)).float())
    return torch.cat(out)


def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """(accuracy, AUC) of ``model`` on a split."""
    logits = predict(model, split.x)
    return accuracy(logits, split.y), auc(logits, split.y)


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    return model(x)


@functools.cache
def compiled_forward() -> Callable[[nn.Module, Tensor], Tensor]:
    """``model(x)`` through ``torch.compile``: one compiled function for the process, shared by every ``fit``.

    The model is an argument, not captured: dynamo traces its parameters and buffers as graph inputs and
    guards on its class, its submodules' structure and attributes, the input's shape and ``model.training``.
    So a fresh student of an architecture already seen (the next trial) reuses the compiled graph, and a new
    architecture or batch shape compiles once more (static shapes; after ``torch._dynamo.config.recompile_limit``
    of them dynamo runs the rest eager). The backward is compiled with the forward (AOTAutograd).
    """
    return torch.compile(_forward, dynamic=False)


def _student_forward(model: nn.Module, compile: bool) -> Callable[[Tensor], Tensor]:
    """``model`` itself (eager), or ``model(x)`` through ``compiled_forward`` with a compile failure as a
    KdsearchError naming ``runtime.compile``."""
    if not compile:
        return model
    forward = compiled_forward()
    from torch._dynamo.exc import BackendCompilerFailed  # loaded by torch.compile already

    def run(x: Tensor) -> Tensor:
        try:
            return forward(model, x)
        except BackendCompilerFailed as err:
            if out_of_memory(err):
                raise
            raise KdsearchError(
                f"runtime.compile = true, but torch.compile cannot compile the student {type(model).__name__}: "
                f"{first_line(err)}. Set runtime.compile = false (--set runtime.compile=false) to train it eager"
            ) from err

    return run


def _feature_shape(model: nn.Module, layer: str, x: Tensor, role: str) -> tuple[int, ...]:
    """Per-example shape of ``layer``'s output, from a no-grad dry run on one image."""
    tap = FeatureTap(model, layer, role=role)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x[:1])
        assert tap.output is not None
        return tuple(tap.output.shape[1:])
    finally:
        tap.remove()
        model.train(was_training)


def fit(
    model: nn.Module,
    plan: TrialPlan,
    val: Split,
    *,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[EpochResult]:
    """Train ``model`` in place as ``plan`` says: ``plan.method``'s loss for ``epochs`` × ``steps`` Adam steps.

    ``plan.train`` and ``val`` must already be on the model's device. A method's regressor (hint) is trained
    with the student's optimizer. After each epoch the model is evaluated on ``val`` and ``on_epoch`` is
    called with the result; ``on_step`` after each step.

    Precision: each step's forward and loss in bf16 autocast on CUDA, float32 on CPU (``_autocast``); the
    weights, Adam and the per-epoch evaluation (``predict``) in float32. ``compile`` runs the student's
    training forward and its backward through ``torch.compile`` (``compiled_forward``: compiled once per
    architecture and batch shape in this process, reused by later trials); the loss, Adam and evaluation stay
    eager, and so does the whole step of a feature method (its forward hook reads the student's layer).
    Compiled dropout draws other masks than eager from the same seed. Off, the step is the eager one, unchanged.
    """
    method, params, train, live_teacher, augment = plan.method, plan.params, plan.train, plan.live_teacher, plan.augment
    student_layer, batch_size, seed, steps = plan.student_layer, plan.batch_size, plan.seed, plan.steps_per_epoch
    device = train.x.device
    model.to(memory_format=torch.channels_last)
    if live_teacher is not None:
        live_teacher.model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    aug_generator = torch.Generator(device=device).manual_seed(seed) if augment else None
    params_to_train = list(model.parameters())
    student_tap = teacher_tap = regressor = None
    if method.needs_features:
        if (
            not student_layer
            or (live_teacher is None and train.teacher_features is None)
            or (live_teacher is not None and not live_teacher.feature_layer)
        ):
            raise ValueError(f"{method.name} needs student_layer and teacher features (cached or a live tap)")
        if live_teacher is not None:
            t_shape = _feature_shape(live_teacher.model, live_teacher.feature_layer, train.x, "teacher")
            teacher_tap = FeatureTap(live_teacher.model, live_teacher.feature_layer, role="teacher")
        else:
            t_shape = tuple(train.teacher_features.shape[1:])
        s_shape = _feature_shape(model, student_layer, train.x, "student")
        student_tap = FeatureTap(model, student_layer, role="student")
        regressor = method.make_regressor(s_shape, t_shape)
        if regressor is not None:
            regressor = regressor.to(device)
            params_to_train += list(regressor.parameters())
    optimizer = torch.optim.Adam(params_to_train, lr=plan.lr)
    student = _student_forward(model, plan.compile and student_tap is None)
    if live_teacher is not None:
        live_teacher.model.eval()
    history: list[EpochResult] = []
    try:
        for epoch in range(1, plan.epochs + 1):
            model.train()
            idx = batch_indices(len(train), batch_size, steps, generator)
            if isinstance(train.x, ImageStore):  # decoded ahead by the loader workers, in the same seeded order
                images = (channels_last(x) for x in train.x.batches(idx))
            else:
                images = None
            idx = idx.to(device)
            total = torch.zeros((), device=device)
            for step, rows in enumerate(idx):
                x = train.x[rows] if images is None else next(images)
                if augment is not None:
                    x = channels_last(augment_batch(x, augment, aug_generator))
                with _autocast(device):
                    if live_teacher is not None and method.needs_teacher:
                        with torch.no_grad():
                            t_logits = live_teacher.model(x).float()
                        t_features = teacher_tap.output.float() if teacher_tap is not None else None
                    else:
                        t_logits = None if train.teacher_logits is None else train.teacher_logits[rows]
                        t_features = None if train.teacher_features is None else train.teacher_features[rows].float()
                    batch = DistillBatch(
                        student_logits=student(x).float(),
                        labels=train.y[rows],
                        labeled=train.labeled[rows],
                        teacher_logits=t_logits,
                        student_features=student_tap.output.float() if student_tap is not None else None,
                        teacher_features=t_features,
                        progress=epoch - 1 + (step + 1) / steps,
                    )
                    loss = method.loss(batch, params, regressor=regressor)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
                raise_if_stop_requested()  # a Ctrl-C that Python swallowed in a finalizer still stops here
                if on_step is not None:
                    on_step()
            if images is not None:
                images.close()  # stops the loader workers
            acc, roc = evaluate(model, val)
            result = EpochResult(epoch, acc, roc, float(total) / steps)
            history.append(result)
            if on_epoch is not None:
                on_epoch(result)
    finally:
        for tap in (student_tap, teacher_tap):
            if tap is not None:
                tap.remove()
    return history
