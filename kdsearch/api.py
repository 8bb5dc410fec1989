"""The Python API: what ``kdsearch run`` and ``kdsearch export`` do, with objects instead of files.

Example (a notebook or script; the study file gives everything not handed over)::

    import kdsearch
    result = kdsearch.run_study("studies/fashion_mnist.toml", trials=20,
                                teacher=my_teacher,                  # an nn.Module, used as it is
                                student=lambda: MyStudent(width=32), # a factory: a fresh student per trial
                                data={"train": train_ds, "test": test_ds})
    result.best["kd"]["params"]       # {'temperature': ..., 'alpha': ...} (validation)
    result.comparison.students        # test scores of every retrained student and of scratch, per seed
    result.students["kd"].files       # safetensors, TorchScript, ONNX and card.json of the best kd student
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from .progress import Console
from .runner import StudyResult, export_trial, given_data_spec, run


def _spec_with(
    spec: Any,
    *,
    overrides: Sequence[str] | Mapping[str, Any] | None,
    teacher: Any,
    student: Any,
    data: Any,
    name: str | None,
    output_dir: Path | str | None,
    storage: str | None,
):
    """The study spec (a path, a StudySpec or a dict) with the API's arguments applied."""
    from .config.load import apply_overrides, load_spec, set_field, spec_from_dict, with_study_folder
    from .config.spec import StudySpec

    if isinstance(spec, StudySpec):
        base = spec
    elif isinstance(spec, Mapping):
        base = with_study_folder(spec_from_dict(dict(spec)), Path.cwd())
    else:
        base = load_spec(Path(spec))
    raw = base.model_dump(mode="json")
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            raw = set_field(raw, key, value)
    elif overrides:
        raw = apply_overrides(raw, list(overrides))
    if teacher is not None:
        raw["teacher"]["arch"] = "python"
        for key in ("checkpoint", "arch_args"):
            raw["teacher"].pop(key, None)
    if student is not None:
        raw["student"]["arch"] = "python"
        raw["student"].pop("arch_args", None)
    if data is not None:
        raw["data"] = given_data_spec(raw["data"])
    if name:
        raw["name"] = name
    if output_dir is not None:
        raw["output_dir"] = str(output_dir)
    if storage:
        raw["storage"] = storage
    return spec_from_dict(raw, source="run_study arguments")


def run_study(
    spec: Any = "studies/fashion_mnist.toml",
    *,
    trials: int | None = None,
    teacher: nn.Module | None = None,
    student: Callable[..., nn.Module] | None = None,
    data: Mapping[str, Any] | Sequence[Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    name: str | None = None,
    output_dir: Path | str | None = None,
    storage: str | None = None,
    workers: int = 1,
    verbose: bool = True,
) -> StudyResult:
    """Run a study as ``kdsearch run`` does and return its result (best per method, test comparison, files).

    ``spec``: a study TOML path, a ``StudySpec`` or a dict of its fields. ``teacher``: an ``nn.Module`` used
    as it is (its outputs are cached under a hash of its state_dict; ``teacher.fine_tune_epochs`` still
    applies, on a copy). ``student``: a factory (``lambda: MyStudent()`` or the class; it may take
    ``num_classes``, ``in_channels``, ``image_size``) called once per trial. ``data``: datasets as a
    ``data.factory`` returns them: ``{"train": ..., "val": ..., "test": ..., "classes": [...]}`` or
    ``(train, test)``, items ``(image, label)``. ``overrides``: spec fields, ``{"student.epochs": 2}`` or
    ``["student.epochs=2"]``. Ctrl-C raises ``KeyboardInterrupt`` after the running trial is marked
    FAILED; finished trials stay in the storage, and calling again adds trials.
    """
    from .nets.models import given_models

    full = _spec_with(
        spec,
        overrides=overrides,
        teacher=teacher,
        student=student,
        data=data,
        name=name,
        output_dir=output_dir,
        storage=storage,
    )
    console = Console(echo=_printer(verbose), bars=verbose)
    with given_models(teacher=teacher, student=student):
        return run(
            full,
            trials=trials,
            workers=workers,
            console=console,
            datasets=data,
            spec_path=None if isinstance(spec, Mapping) or not isinstance(spec, (str, Path)) else Path(spec),
        )


def export_student_of(
    result_or_study: Any,
    out: Path | str,
    *,
    method: str | None = None,
    trial: int | None = None,
    epochs: int | None = None,
    train_on: str = "train",
    teacher: nn.Module | None = None,
    student: Callable[..., nn.Module] | None = None,
    data: Mapping[str, Any] | Sequence[Any] | None = None,
    verbose: bool = True,
):
    """``kdsearch export`` from Python: retrain a trial of a finished study (a ``StudyResult`` or an
    ``optuna.Study``; default its best), optionally longer or on train+val, score it on test and write the
    four files into ``out``. Objects handed to ``run_study`` must be handed again. Returns an ExportedStudent."""
    from .nets.models import given_models
    from .runner import spec_of_study

    study = getattr(result_or_study, "study", result_or_study)
    spec = spec_of_study(study)
    console = Console(echo=_printer(verbose), bars=verbose)
    with given_models(teacher=teacher, student=student):
        return export_trial(
            study,
            spec,
            Path(out),
            method=method,
            trial=trial,
            epochs=epochs,
            train_on=train_on,
            console=console,
            datasets=data,
        )


def _printer(verbose: bool) -> Callable[..., None]:
    import sys

    def echo(text: str, err: bool = False) -> None:
        if verbose or err:
            print(text, file=sys.stderr if err else sys.stdout)

    return echo
