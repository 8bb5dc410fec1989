"""The fast training loop: device-resident tensors, index batching, cached teacher logits.

``fit`` knows nothing about Optuna: it calls ``on_epoch`` after each epoch, and a callback that
raises (e.g. ``optuna.TrialPruned``) stops training.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from .data import Split
from .methods import DistillBatch, Method
from .metrics import accuracy, auc


@dataclass
class TrainSet:
    """The images a student trains on, resident on one device.

    ``labeled`` marks the rows whose labels the loss may use; ``teacher_logits`` are the cached
    teacher outputs for the same rows (None for teacher-free training).
    """

    x: Tensor
    y: Tensor
    labeled: Tensor
    teacher_logits: Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> "TrainSet":
        t = self.teacher_logits.to(device) if self.teacher_logits is not None else None
        return TrainSet(self.x.to(device), self.y.to(device), self.labeled.to(device), t)


@dataclass
class EpochResult:
    epoch: int  # 1-based
    accuracy: float
    auc: float
    train_loss: float


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict(model: nn.Module, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode, as float32 on x's device."""
    model.eval()
    with _autocast(x.device):
        return torch.cat([model(chunk).float() for chunk in x.split(batch_size)])


def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """(accuracy, AUC) of ``model`` on a split."""
    logits = predict(model, split.x)
    return accuracy(logits, split.y), auc(logits, split.y)


def fit(
    model: nn.Module,
    method: Method,
    params: Mapping[str, float],
    train: TrainSet,
    val: Split,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    steps: int | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[EpochResult]:
    """Train ``model`` in place with ``method``'s loss for ``epochs`` × ``steps`` Adam steps.

    ``train`` and ``val`` must already be on the model's device. ``seed`` fixes the batch order;
    ``steps`` per epoch defaults to one pass over ``train``. After each epoch the model is
    evaluated on ``val`` and ``on_epoch`` is called with the result.
    """
    device = train.x.device
    steps = steps or steps_per_epoch(len(train), batch_size)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[EpochResult] = []
    for epoch in range(1, epochs + 1):
        model.train()
        idx = batch_indices(len(train), batch_size, steps, generator).to(device)
        total = torch.zeros((), device=device)
        for rows in idx:
            with _autocast(device):
                batch = DistillBatch(
                    student_logits=model(train.x[rows]).float(),
                    labels=train.y[rows],
                    labeled=train.labeled[rows],
                    teacher_logits=None if train.teacher_logits is None else train.teacher_logits[rows],
                )
                loss = method.loss(batch, params)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            if on_step is not None:
                on_step()
        acc, roc = evaluate(model, val)
        result = EpochResult(epoch, acc, roc, float(total) / steps)
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
    return history
