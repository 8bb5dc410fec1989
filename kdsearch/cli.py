"""The ``kdsearch`` command line (Typer): run, teacher, report. Progress bars and friendly errors live here."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer
from tqdm import tqdm

from .errors import KdsearchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Search knowledge-distillation hyperparameters (method, temperature T, alpha) with Optuna.",
)
STATE = {"debug": False}
DEFAULT_SPEC = Path("studies") / "fashion_mnist.toml"
F = TypeVar("F", bound=Callable)


def friendly(command: F) -> F:
    """Turn a KdsearchError into one line on stderr and exit code 2 (the traceback only with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KdsearchError as err:
            if STATE["debug"]:
                raise
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    STATE["debug"] = debug


class _DropInterruptTracebacks(logging.Filter):
    """Optuna logs a FAILED trial with its traceback; for Ctrl-C that is noise, we print how to resume."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def quiet_optuna() -> None:
    """Optuna warnings only (our progress bars replace its per-trial INFO lines), without Ctrl-C tracebacks."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:  # handler filters also see records of child loggers
        if not any(isinstance(f, _DropInterruptTracebacks) for f in handler.filters):
            handler.addFilter(_DropInterruptTracebacks())


def default_spec_path() -> Path:
    """``studies/fashion_mnist.toml`` in the working directory, else the one shipped beside the package."""
    if DEFAULT_SPEC.is_file():
        return DEFAULT_SPEC
    return Path(__file__).resolve().parents[1] / DEFAULT_SPEC


SpecOpt = typer.Option(None, "--spec", "-s", help="Study TOML (default: studies/fashion_mnist.toml).")
DataRootOpt = typer.Option(None, "--data-root", help="Folder holding the dataset files (overrides data.root).")
StorageOpt = typer.Option(None, "--storage", help="Optuna storage URL (default: SQLite next to the outputs).")
StudyOpt = typer.Option(None, "--study", help="Study name (overrides the spec's name).")
OutOpt = typer.Option(None, "--output-dir", "-o", help="Where study.db and report.html go (default: runs/<name>).")
DeviceOpt = typer.Option(None, "--device", help="'cpu', 'cuda', 'cuda:N' or 'auto'.")


def load_study_spec(
    spec_path: Optional[Path],
    *,
    data_root: Optional[Path] = None,
    study: Optional[str] = None,
    storage: Optional[str] = None,
    output_dir: Optional[Path] = None,
    device: Optional[str] = None,
):
    """Load the spec file and apply command-line overrides (validated like the file)."""
    from .spec import load_spec, spec_from_dict

    path = spec_path or default_spec_path()
    spec = load_spec(path)
    raw = spec.model_dump(mode="json")
    if data_root is not None:
        raw["data"]["root"] = str(data_root)
    if study:
        raw["name"] = study
    if storage:
        raw["storage"] = storage
    if output_dir is not None:
        raw["output_dir"] = str(output_dir)
    if device:
        raw["runtime"]["device"] = device
    return spec_from_dict(raw, source=str(path)), path


def _prepare(spec):
    """Data and teacher, with a progress bar while the teacher trains."""
    import torch

    from .data import load_splits
    from .teacher import prepare_teacher, teacher_steps
    from .train import configure_threads, resolve_device

    configure_threads(spec.runtime.threads)
    device = resolve_device(spec.runtime.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdsearchError(f"runtime.device = {spec.runtime.device!r} but no CUDA device is visible; use --device cpu")
    splits = load_splits(spec.data)
    typer.echo(
        f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images, "
        f"{splits.num_classes} classes; student pool {len(splits.labeled)} labeled + {len(splits.unlabeled)} unlabeled"
    )
    bar = tqdm(total=teacher_steps(spec, splits), desc=f"teacher {spec.teacher.arch}", unit="step", leave=False)
    try:
        teacher = prepare_teacher(
            spec,
            splits,
            device,
            on_step=lambda: bar.update(),
            on_epoch=lambda r: bar.set_postfix(epoch=r.epoch, val_acc=f"{r.accuracy:.4f}"),
        )
    finally:
        bar.close()
    how = "loaded from cache (no retraining)" if teacher.from_cache else "trained and cached"
    m = teacher.metrics
    typer.echo(f"teacher {spec.teacher.arch}: {how} at {teacher.path}")
    typer.echo(
        f"teacher accuracy: val {m['val_accuracy']:.4f}, test {m['test_accuracy']:.4f} "
        f"(AUC val {m['val_auc']:.4f}, test {m['test_auc']:.4f})"
    )
    return splits, teacher, device


def _final_and_report(study, data, teacher, report_path: Path) -> None:
    from .report import summary_text, write_report
    from .search import best_trials_per_method, final_comparison

    n_runs = (len(best_trials_per_method(study)) + 1) * data.spec.final.seeds
    bar = tqdm(total=n_runs, desc="final comparison on test", unit="run", leave=False)
    try:
        final_comparison(data, study, teacher, on_run=lambda label, seed: bar.update())
    finally:
        bar.close()
    path = write_report(study, report_path)
    typer.echo(summary_text(study))
    typer.echo(f"report: {path}")


@app.command()
@friendly
def run(
    trials: Optional[int] = typer.Option(None, "--trials", "-n", min=1, help="Trials to add (default: search.trials)."),
    spec_path: Optional[Path] = SpecOpt,
    data_root: Optional[Path] = DataRootOpt,
    storage: Optional[str] = StorageOpt,
    study_name: Optional[str] = StudyOpt,
    output_dir: Optional[Path] = OutOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Run the study: teacher once, N trials, final comparison on the test split, report.html."""
    import optuna

    from .search import TEACHER_ATTR, create_study, make_objective, open_storage, prepare_study_data

    spec, path = load_study_spec(
        spec_path, data_root=data_root, study=study_name, storage=storage, output_dir=output_dir, device=device
    )
    quiet_optuna()
    url = spec.resolved_storage()
    store = open_storage(url)
    splits, teacher, dev = _prepare(spec)
    study = create_study(spec, store)
    study.set_user_attr(TEACHER_ATTR, teacher.metrics)
    already = len(study.trials)
    if already:
        typer.echo(f"study {spec.name!r}: resuming, {already} trials already in {url}")
    data = prepare_study_data(spec, splits, teacher, dev)
    n = trials or spec.search.trials
    bar = tqdm(total=n, desc="trials", unit="trial")

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.update()
        try:
            bar.set_postfix(best=f"{study.best_value:.4f}", last=trial.state.name.lower())
        except ValueError:
            bar.set_postfix(last=trial.state.name.lower())

    resume = f"kdsearch run --spec {path} --storage {url} --trials N"
    try:
        study.optimize(make_objective(data), n_trials=n, callbacks=[on_trial])
        bar.close()
        _final_and_report(study, data, teacher, spec.resolved_output_dir() / "report.html")
    except KeyboardInterrupt:
        bar.close()
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        typer.echo(
            f"\ninterrupted: the running trial is marked FAILED; {done} finished trials are kept in {url}.\n"
            f"resume with: {resume}",
            err=True,
        )
        raise typer.Exit(130) from None
    typer.echo(f"storage: {url}\nadd trials with: {resume}")


@app.command()
@friendly
def teacher(
    spec_path: Optional[Path] = SpecOpt,
    data_root: Optional[Path] = DataRootOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Train (or load from cache) the study's teacher alone and show its accuracy."""
    spec, _ = load_study_spec(spec_path, data_root=data_root, device=device)
    _prepare(spec)


@app.command()
@friendly
def report(
    study_name: Optional[str] = StudyOpt,
    storage: Optional[str] = StorageOpt,
    spec_path: Optional[Path] = SpecOpt,
    data_root: Optional[Path] = DataRootOpt,
    output: Optional[Path] = typer.Option(None, "--output", help="HTML file to write (default: <output_dir>/report.html)."),
    device: Optional[str] = DeviceOpt,
) -> None:
    """Rebuild report.html from storage (runs the final comparison first if it is missing)."""
    import optuna

    from .report import summary_text, write_report
    from .search import FINAL_ATTR, load_study, open_storage, prepare_study_data, study_spec

    quiet_optuna()
    if storage is None:
        spec, _ = load_study_spec(spec_path, study=study_name)
        storage = spec.resolved_storage()
    study = load_study(study_name, open_storage(storage))
    spec = study_spec(study)
    if data_root is not None or device:
        raw = spec.model_dump(mode="json")
        if data_root is not None:
            raw["data"]["root"] = str(data_root)
        if device:
            raw["runtime"]["device"] = device
        from .spec import spec_from_dict

        spec = spec_from_dict(raw)
    out = output or spec.resolved_output_dir() / "report.html"
    if FINAL_ATTR not in study.user_attrs:
        typer.echo("no final comparison stored yet: running it now")
        splits, teacher_, dev = _prepare(spec)
        _final_and_report(study, prepare_study_data(spec, splits, teacher_, dev), teacher_, out)
        return
    path = write_report(study, out)
    typer.echo(summary_text(study))
    typer.echo(f"report: {path}")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
