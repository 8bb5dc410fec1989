"""Pure metrics: accuracy and AUC from logits (torchmetrics), and model cost figures."""

from __future__ import annotations

import io
import statistics
import time

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of rows whose arg-max matches the label."""
    return float((logits.argmax(dim=1) == labels).float().mean())


def auc(logits: Tensor, labels: Tensor) -> float:
    """ROC AUC: binary on the positive class for 2 classes, else macro one-vs-rest."""
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    if num_classes == 2:
        return float(binary_auroc(probs[:, 1], labels))
    return float(multiclass_auroc(probs, labels, num_classes=num_classes, average="macro"))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    """Size of the saved ``state_dict`` in MB (10**6 bytes)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def flops_per_image(model: nn.Module, sample: Tensor) -> float:
    """FLOPs of one forward pass on one image, counted by ``torch.utils.flop_counter`` (NaN for a model it cannot
    count, e.g. a ``torch.export`` program with symbolic shapes)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(sample[:1])
    except RuntimeError:
        return float("nan")
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _median_seconds(model: nn.Module, x: Tensor, repeats: int) -> float:
    """Median wall time of ``repeats`` eval-mode forward passes on ``x`` (after one warm-up pass)."""
    model.eval()
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def latency_ms(model: nn.Module, sample: Tensor, *, repeats: int = 20) -> float:
    """Median wall time of a batch-1 forward pass in milliseconds (after a warm-up)."""
    return _median_seconds(model, sample[:1], repeats) * 1e3


def throughput(model: nn.Module, sample: Tensor, *, batch_size: int = 64, repeats: int = 5) -> float:
    """Images per second at ``batch_size`` (median of ``repeats`` timed forward passes)."""
    x = sample[:1].expand(batch_size, *sample.shape[1:]).contiguous()
    return batch_size / _median_seconds(model, x, repeats)


def cost_row(model: nn.Module, sample: Tensor) -> dict[str, float]:
    """Parameters, size (MB), FLOPs per image, CPU latency (ms, batch 1) and throughput (img/s, batch 64).

    Timings run on a CPU copy of the model, so they describe CPU inference whatever device trained it.
    """
    import copy

    try:
        cpu_model = copy.deepcopy(model).cpu().float()
        x = sample[:1].cpu().float()
    except RuntimeError:  # e.g. a torch.export program (symbolic shapes) cannot be copied: measure it where it is
        cpu_model, x = model, sample[:1]
    return {
        "params": count_parameters(cpu_model),
        "size_mb": size_mb(cpu_model),
        "flops": flops_per_image(cpu_model, x),
        "latency_ms": latency_ms(cpu_model, x),
        "throughput": throughput(cpu_model, x),
    }
