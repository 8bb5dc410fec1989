"""Train-or-load the teacher once and cache it with its logits on the training split.

The entry holds the weights' and the logits' sha256: logits that are not provably the outputs of the
cached weights (damaged, edited, or an entry from before the digests) are computed again on load.

The cache entry is keyed by a hash of everything that determines the teacher (data, split,
architecture, training settings, seed); a file lock makes parallel workers share one copy,
and the file is written to a temporary name and renamed, so nobody reads half a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock
from torch import Tensor, nn

from ..config.spec import GIVEN_ARCH, WHOLE_MODEL_ARCHS, StudySpec
from ..data import Splits, default_cache_root, save_atomic
from ..errors import KdsearchError, first_line
from ..nets.hub import weights_file
from ..nets.identity import file_sha256
from ..nets.models import (
    FeatureTap,
    build_model,
    code_fingerprint,
    load_checkpoint,
    state_dict_sha256,
    tensor_bytes,
)
from .methods import build_method
from .train import Augment, EpochResult, TrainSet, TrialPlan, channels_last, evaluate, fit, predict, steps_per_epoch

CACHE_VERSION = 1
log = logging.getLogger(__name__)


@dataclass
class Teacher:
    """A trained teacher, its cached logits on ``splits.train`` and its reference scores."""

    model: nn.Module
    train_logits: Tensor
    metrics: dict[str, float]  # val_accuracy, val_auc (the test split is scored only by the final comparison)
    from_cache: bool
    path: Path
    digest: (
        str  # sha256 of the weights (``models.state_dict_sha256``): the same weights, the same digest, on every machine
    )


def cache_root(spec: StudySpec) -> Path:
    """The cache folder: ``runtime.cache_dir``, else ``$KDSEARCH_CACHE``, else ``~/.cache/kdsearch``."""
    return Path(spec.runtime.cache_dir) if spec.runtime.cache_dir is not None else default_cache_root()


def teacher_key(spec: StudySpec, splits: Splits) -> str:
    """Hash of everything that determines the teacher's weights and logits."""
    teacher = spec.teacher.model_dump(mode="json", exclude={"feature_layer", "feature_cache_mb"})
    code = code_fingerprint(spec.teacher.arch, "teacher")  # the user's module file, or a handed module's weights
    if code:
        teacher["code"] = code
    if not teacher.get("pretrained"):
        teacher.pop("pretrained", None)  # keys of studies from before the field stay as they were
    if spec.teacher.arch == GIVEN_ARCH or starts_pretrained(spec.teacher):
        teacher.pop("epochs")  # a handed or pretrained teacher is used as it is (plus fine_tune_epochs)
    elif spec.teacher.checkpoint is not None:
        path = Path(spec.teacher.checkpoint)
        if path.is_dir():  # a hub-style folder: its weights file
            path = weights_file(path) or path
        if not path.is_file():
            raise KdsearchError(
                f"teacher.checkpoint {path} not found; point it at a .pt file (state_dict or TorchScript)"
            )
        teacher["checkpoint"] = file_sha256(path)  # its content, not its name
        teacher.pop("epochs")
    else:
        teacher.pop("fine_tune_epochs")
    payload = {
        "version": CACHE_VERSION,
        "data": splits.fingerprint,
        "shape": [splits.num_classes, splits.in_channels, splits.image_size],
        "teacher": teacher,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def teacher_cache_path(spec: StudySpec, splits: Splits, key: str | None = None) -> Path:
    """The cache file of this spec's teacher on this data (``<cache>/teachers/<arch>-<teacher_key>.pt``; ``key``:
    the teacher key when the caller has it)."""
    arch = re.sub(r"[^A-Za-z0-9_.:-]+", "_", spec.teacher.arch.rstrip("/"))[-60:]  # timm/x, hf/<folder>: one file name
    return cache_root(spec) / "teachers" / f"{arch}-{key or teacher_key(spec, splits)}.pt"


def cache_teacher(
    model: nn.Module,
    metrics: dict[str, float],
    splits: Splits,
    device: torch.device,
    path: Path,
    *,
    digest: str | None = None,
    from_cache: bool = False,
) -> Teacher:
    """Compute ``model``'s logits on the training split and write the cache entry at ``path`` (atomically).
    ``digest``: its weights' ``state_dict_sha256`` when the caller has just computed it; ``from_cache``: the
    weights were not trained here (a verified download)."""
    model = model.to(device).eval()
    train_logits = predict(model, splits.train.x.to(device)).cpu()
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    digest = digest or state_dict_sha256(state)
    entry = {"state_dict": state, "train_logits": train_logits, "metrics": metrics}
    entry |= {"weights_sha256": digest, "logits_sha256": logits_sha256(train_logits)}  # the logits of these weights
    save_atomic(entry, path)
    return Teacher(model, train_logits, metrics, from_cache, path, digest)


def logits_sha256(logits: Tensor) -> str:
    """sha256 (hex) of a logits tensor (its dtype, shape and bytes)."""
    return hashlib.sha256(f"{logits.dtype}|{list(logits.shape)}|".encode() + tensor_bytes(logits)).hexdigest()


def starts_pretrained(model_spec: Any) -> bool:
    """Whether a model's weights come with its arch: ``pretrained = true`` (timm) or an ``hf/`` folder."""
    return bool(model_spec.pretrained) or model_spec.arch.startswith("hf/")


def train_teacher(
    spec: StudySpec,
    splits: Splits,
    device: torch.device,
    *,
    on_step: Callable[[], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> nn.Module:
    """Train the spec's teacher with cross-entropy on the whole training split (optionally augmented).

    With ``teacher.checkpoint`` the weights are loaded from it and trained for
    ``fine_tune_epochs`` (possibly 0) instead of ``epochs``.
    """
    t = spec.teacher
    torch.manual_seed(t.seed)
    model = build_teacher_model(spec, splits)
    epochs = t.epochs
    if t.arch in (*WHOLE_MODEL_ARCHS, GIVEN_ARCH) or starts_pretrained(t):
        epochs = t.fine_tune_epochs
    elif t.checkpoint is not None:
        load_checkpoint(model, Path(t.checkpoint), role="teacher", arch=t.arch, ignore=tuple(t.checkpoint_ignore))
        epochs = t.fine_tune_epochs
    model = model.to(device)
    head = getattr(model, "_kdsearch_reinit_head", None)
    if epochs == 0 and head:
        raise KdsearchError(
            f"the teacher's classifier head ({head}) was re-initialised for {splits.num_classes} classes, so it "
            "predicts nothing yet; set teacher.fine_tune_epochs (e.g. 2) to train it on this data"
        )
    if epochs == 0:
        return model
    train = TrainSet(splits.train.x, splits.train.y, torch.ones(len(splits.train), dtype=torch.bool)).to(device)
    plan = TrialPlan(
        build_method("scratch"),
        {},
        t.seed,
        train,
        epochs=epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        augment=Augment(t.augment_shift, t.augment_flip) if (t.augment_shift or t.augment_flip) else None,
    )
    fit(model, plan, splits.val.to(device), on_step=on_step, on_epoch=on_epoch)
    return model


def build_teacher_model(spec: StudySpec, splits: Splits) -> nn.Module:
    """The spec's teacher architecture for this data (fresh, or the whole model its file or the Python API holds)."""
    t = spec.teacher
    return build_model(
        t.arch,
        splits.num_classes,
        splits.in_channels,
        splits.image_size,
        args=t.arch_args,
        checkpoint=t.checkpoint,
        pretrained=t.pretrained,
        role="teacher",
    )


def teacher_steps(spec: StudySpec, splits: Splits) -> int:
    """Optimizer steps of a teacher training run (for progress bars)."""
    given = spec.teacher.checkpoint is not None or spec.teacher.arch == GIVEN_ARCH or starts_pretrained(spec.teacher)
    epochs = spec.teacher.fine_tune_epochs if given else spec.teacher.epochs
    return epochs * steps_per_epoch(len(splits.train), spec.teacher.batch_size)


def prepare_teacher(
    spec: StudySpec,
    splits: Splits,
    device: torch.device,
    *,
    on_step: Callable[[], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    key: str | None = None,
) -> Teacher:
    """Load the cached teacher for this spec and data, or train, score (validation split) and cache it (under a
    lock). ``key``: its ``teacher_key``, when the caller has computed it."""
    path = teacher_cache_path(spec, splits, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
                model = build_teacher_model(spec, splits)
                model.load_state_dict(entry["state_dict"])
                metrics = {
                    k: v for k, v in entry["metrics"].items() if k.startswith("val_")
                }  # older entries held test too
                model = model.to(device).eval()
                digest = state_dict_sha256(model.state_dict())
                logits = entry["train_logits"]
                if (
                    entry.get("weights_sha256") != digest
                    or entry.get("logits_sha256") != logits_sha256(logits)
                    or tuple(logits.shape) != (len(splits.train), splits.num_classes)
                ):  # the logits are not (or no longer provably) these weights' outputs on this data: compute them
                    log.warning("teacher cache %s: its logits do not match its weights; computing them again", path)
                    return cache_teacher(model, metrics, splits, device, path, digest=digest, from_cache=True)
                return Teacher(model, logits, metrics, True, path, digest)
            except (RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as err:
                # damaged (empty, truncated, not a dict), or the model changed
                log.warning(
                    "teacher cache %s is unreadable or stale (%s); training the teacher again", path, first_line(err)
                )
        model = train_teacher(spec, splits, device, on_step=on_step, on_epoch=on_epoch)
        val_acc, val_auc = evaluate(model, splits.val.to(device))
        return cache_teacher(model, {"val_accuracy": val_acc, "val_auc": val_auc}, splits, device, path)


def feature_cache_mb(n_rows: int, shape: tuple[int, ...]) -> float:
    """Memory of ``n_rows`` cached feature maps of ``shape`` in float16, in MB."""
    size = 1
    for d in shape:
        size *= d
    return n_rows * size * 2 / 1e6


@torch.inference_mode()
def teacher_features(model: nn.Module, layer: str, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """The teacher's ``layer`` outputs on ``x`` (eval mode), as float16 on x's device."""
    tap = FeatureTap(model, layer, role="teacher")
    model.eval().to(memory_format=torch.channels_last)
    try:
        chunks = []
        for chunk in x.split(batch_size):
            model(channels_last(chunk))
            chunks.append(tap.output.half().contiguous())
        return torch.cat(chunks)
    finally:
        tap.remove()
