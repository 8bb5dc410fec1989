"""Before a study trains: the data, a check of the user's own models, the study's teacher and the data every
trial trains on (``prepare``, ``study_data``), with what each step did said on the console.

``runner.py`` calls it for every command that trains or scores (run, worker, report, export); the benchmarks
and tests call it to get a study's data without running one.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .errors import KdsearchError
from .progress import Console

if TYPE_CHECKING:
    import torch

    from .config.spec import StudySpec
    from .data import Splits
    from .distill.teacher import Teacher


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` made ready: the spec with the methods this task can use (the others dropped, once), the
    data, the study's teacher and the device."""

    spec: StudySpec
    splits: Splits
    teacher: Teacher
    device: torch.device


def writable_dir(path: Path, what: str) -> Path:
    """``path``, created when missing; a KdsearchError naming ``what`` (the setting) when no file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".kdsearch-probe-"):
            pass
    except OSError as err:
        raise KdsearchError(f"{what} {path} is not a writable folder ({err.strerror or err}); choose another") from None
    return path


def check_models(spec, splits) -> None:
    """Fail before the teacher is built when the user's own teacher or student (import path, whole-model file,
    Python object) cannot be built or does not map this data's images to (N, num_classes) logits."""
    from .distill.teacher import build_teacher_model
    from .nets.models import MODELS, check_model_output
    from .search.objective import build_student_model

    shape = {"num_classes": splits.num_classes, "in_channels": splits.in_channels, "image_size": splits.image_size}
    checks = [
        ("teacher", spec.teacher.arch, lambda: build_teacher_model(spec, splits)),
        ("student", spec.student.arch, lambda: build_student_model(spec, splits)),
    ]
    for name, student in spec.student.candidate_specs().items():
        as_study = spec.model_copy(update={"student": student})
        checks.append((f"student {name!r}", student.arch, lambda s=as_study: build_student_model(s, splits)))
    for role, arch, build in checks:
        if arch not in MODELS:  # the registry's nets are known to fit any data they can be built for
            check_model_output(build(), role=role, arch=arch, **shape)
        else:  # a registry net with a width must still fit the images
            build()


def prepare(
    spec, console: Console, *, datasets: Any = None, study: Any = None, url: Optional[str] = None, storage=None
):
    """Data and teacher, with a progress bar while the teacher trains, as a ``Prepared``.

    With ``study`` the teacher is the study's one teacher (``teacher_share.share_teacher``): with its storage
    ``url`` and ``storage``, the first process publishes its teacher; without, the recorded one is only used."""
    from .data import load_splits
    from .distill.teacher import cache_root, prepare_teacher, teacher_key, teacher_steps
    from .distill.train import configure_threads, resolve_device
    from .nets.hub import pretrained_input
    from .nets.identity import code_identity, handed_student_identity
    from .nets.imports import use_python_path
    from .search.study import check_same_code

    echo = console.echo
    use_python_path(spec.runtime.python_path)
    if study is not None:  # before anything is imported or trained: a resume with other code is refused
        check_same_code(study, spec, code_identity(spec))
    writable_dir(cache_root(spec), "the cache folder (runtime.cache_dir, else $KDSEARCH_CACHE or ~/.cache/kdsearch)")
    configure_threads(spec.runtime.threads)
    device = resolve_device(spec.runtime.device)  # KdsearchError for a device this machine lacks
    data_spec, said = pretrained_input(spec)  # a pretrained hub teacher's mean/std/size where the study sets none
    if said:
        echo(said)
    splits = load_splits(data_spec, cache_dir=cache_root(spec) / "data", datasets=datasets)
    if splits.skipped:
        echo(f"data: skipped {len(splits.skipped)} unreadable image(s) (data.skip_unreadable = true)")
    if splits.streaming:
        echo(f"data: {splits.streaming}")
    if splits.cache_hit is not None:
        echo("data: decoded images " + ("loaded from cache" if splits.cache_hit else "decoded and cached"))
    echo(
        f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images, "
        f"{splits.num_classes} classes; student pool {len(splits.labeled)} labeled + {len(splits.unlabeled)} unlabeled"
    )
    from .search.objective import methods_for_task

    task_spec, dropped = methods_for_task(spec, splits.num_classes)  # nothing left: refused before the teacher
    for method, why in dropped.items():
        echo(f"warning: method {method} is dropped from this study: on {splits.num_classes} classes {why}")
    check_models(spec, splits)
    if study is not None:
        shape = (splits.num_classes, splits.in_channels, splits.image_size)
        check_same_code(study, spec, handed_student_identity(spec.student.arch, *shape))
    key = teacher_key(spec, splits)  # hashes a checkpoint or a handed model's weights: once per command

    def build():
        bar = console.progress(teacher_steps(spec, splits), f"teacher {spec.teacher.arch}", "step", leave=False)
        try:
            return prepare_teacher(
                spec,
                splits,
                device,
                on_step=lambda: bar.update(),
                on_epoch=lambda r: bar.set_postfix(epoch=r.epoch, val_acc=f"{r.accuracy:.4f}"),
                key=key,
            )
        finally:
            bar.close()

    if study is None:
        teacher = build()
    else:
        from .parallel.teacher_share import share_teacher

        teacher = share_teacher(spec, splits, device, study, url=url, storage=storage, build=build, echo=echo, key=key)
    tuned = spec.teacher.fine_tune_epochs
    tuning = f"fine-tuned {tuned} epoch{'s' * (tuned != 1)}" if tuned else "not fine-tuned"
    if teacher.from_cache:
        how = "loaded from cache (no retraining)"
    elif spec.teacher.arch == "python":
        how = f"handed over from Python, {tuning}, scored and cached"
    elif spec.teacher.checkpoint is not None:
        how = f"loaded from {spec.teacher.checkpoint}, {tuning}, scored and cached"
    else:
        how = "trained and cached"
    m = teacher.metrics
    echo(f"teacher {spec.teacher.arch}: {how} at {teacher.path}")
    echo(
        f"teacher on validation: accuracy {m['val_accuracy']:.4f}, AUC {m['val_auc']:.4f} "
        "(test: scored only in the final comparison)"
    )
    return Prepared(task_spec, splits, teacher, device)


def study_data(prepared: Prepared, console: Console, *, study: Any = None):
    """``prepare_study_data``, saying how feature methods get teacher features and which layers they read; with
    candidate students, their costs (``study``'s stored ones, else measured and stored) and the budgets applied."""
    from .distill.methods import METHODS
    from .nets.models import MODELS
    from .search.objective import prepare_study_data, with_costs

    spec = prepared.spec
    data = prepare_study_data(spec, prepared.splits, prepared.teacher, prepared.device)
    if data.students:
        from .ship.costs import study_costs

        data = with_costs(data, study_costs(study, data, echo=console.echo))
        for name, why in data.excluded.items():
            console.echo(f"student {name}: never sampled, over search.constraints ({why})")
        costs = data.costs.students
        shown = ", ".join(
            f"{n} ({costs[n].params / 1e3:.0f}k params"
            + (f", ONNX {costs[n].onnx_latency_ms:.3f} ms" if costs[n].onnx_latency_ms is not None else "")
            + ")"
            for n in data.students
        )
        how = "samples one of" if spec.multi_objective else "takes in turn one of"
        console.echo(f"students: each trial {how} {len(data.students)}: {shown}")
        if spec.multi_objective:
            console.echo(
                f"search: multi-objective ({spec.search.strategy}) on validation {spec.search.objective} and "
                f"{spec.final.cost}; every trial trains to the end (Optuna cannot prune such a study)"
            )
    feature_methods = [m for m in spec.search.methods if METHODS.get(m).needs_features]
    if data.features != "not needed":
        console.echo(f"teacher features for {', '.join(feature_methods)}: {data.features}")
    if feature_methods:
        for role, model_spec, layer in (
            ("teacher", spec.teacher, data.teacher_layer),
            ("student", spec.student, data.student_layer),
        ):
            if model_spec.feature_layer is None and model_spec.arch not in MODELS:
                how = (
                    "what timm's forward_features returns"
                    if layer == "forward_features"
                    else "the module before its last Linear"
                )
                console.echo(f"{role} feature layer: {layer!r} ({how}; set {role}.feature_layer to choose another)")
    return data
