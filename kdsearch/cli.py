"""The ``kdsearch`` command line (Typer): run, teacher, report. Progress bars and friendly errors live here."""

from __future__ import annotations

import functools
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer
from tqdm import tqdm

from .errors import KdsearchError, first_line, out_of_memory
from .signals import StopSignals, shielded, stop_with_parent

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
    """Turn a KdsearchError into one line on stderr and exit code 2 (the traceback only with --debug), and a
    Ctrl-C that no command handled itself (e.g. during teacher training) into one line and exit code 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KdsearchError as err:
            if STATE["debug"]:
                raise
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            if STATE["debug"]:
                raise
            typer.echo("\ninterrupted: caches and trials are written whole or not at all; run the command again "
                       "to go on", err=True)  # fmt: skip
            raise typer.Exit(130) from None
        except (MemoryError, RuntimeError) as err:
            if STATE["debug"] or not out_of_memory(err):
                raise
            typer.echo(
                f"error: out of memory ({first_line(err)}); lower data.image_size, the teacher's or student's batch_size, or "
                "data.memory_budget_mb (streams image folders from disk), or use a machine with more memory; "
                "finished trials are kept",
                err=True,
            )
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    STATE["debug"] = debug


class _DropInterruptTracebacks(logging.Filter):
    """Optuna logs a FAILED trial with its traceback; for Ctrl-C that is noise (we print how to resume),
    and for a KdsearchError the one-line message says it all (the traceback only with --debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, KeyboardInterrupt):
            return False
        if isinstance(error, KdsearchError) and not STATE["debug"]:
            record.exc_info, record.exc_text = None, None
        return True


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
SetOpt = typer.Option(
    None, "--set", help="Override a spec field, TOML value: --set student.epochs=2 --set 'search.methods=[\"kd\"]'."
)
ThreadsOpt = typer.Option(
    None, "--threads", min=1, help="torch CPU threads per process (with --workers: per worker; default cores // workers)."
)


def load_study_spec(
    spec_path: Optional[Path],
    *,
    data_root: Optional[Path] = None,
    study: Optional[str] = None,
    storage: Optional[str] = None,
    output_dir: Optional[Path] = None,
    device: Optional[str] = None,
    overrides: Optional[list[str]] = None,
):
    """Load the spec file and apply command-line overrides (validated like the file)."""
    from .spec import apply_overrides, load_spec, spec_from_dict

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
    if overrides:
        raw = apply_overrides(raw, overrides)
    return spec_from_dict(raw, source=f"{path} with --set" if overrides else str(path)), path


def writable_dir(path: Path, what: str) -> Path:
    """``path``, created when missing; a KdsearchError naming ``what`` (the setting) when no file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".kdsearch-probe-"):
            pass
    except OSError as err:
        raise KdsearchError(f"{what} {path} is not a writable folder ({err.strerror or err}); choose another") from None
    return path


def resume_command(path: Path, url: str, *, study: Optional[str], output_dir: Optional[Path], data_root: Optional[Path],
                   overrides: Optional[list[str]], workers: int = 1) -> str:  # fmt: skip
    """The ``kdsearch run`` line that adds trials to this study with the settings of this run (the spec and
    every option that changes it; ``--device`` and ``--threads`` may differ)."""
    parts = ["kdsearch", "run", "--spec", str(path), "--storage", url]
    for flag, value in (("--study", study), ("--output-dir", output_dir), ("--data-root", data_root)):
        if value is not None:
            parts += [flag, str(value)]
    for override in overrides or []:
        parts += ["--set", override]
    if workers != 1:
        parts += ["--workers", str(workers)]
    return shlex.join(parts) + " --trials N"


def _prepare(spec):
    """Data and teacher, with a progress bar while the teacher trains."""
    from .data import load_splits
    from .teacher import cache_root, prepare_teacher, teacher_steps
    from .train import configure_threads, resolve_device

    writable_dir(cache_root(spec), "the cache folder (runtime.cache_dir, else $KDSEARCH_CACHE or ~/.cache/kdsearch)")
    configure_threads(spec.runtime.threads)
    device = resolve_device(spec.runtime.device)  # KdsearchError for a device this machine lacks
    splits = load_splits(spec.data, cache_dir=cache_root(spec) / "data")
    if splits.skipped:
        typer.echo(f"data: skipped {len(splits.skipped)} unreadable image(s) (data.skip_unreadable = true)")
    if splits.streaming:
        typer.echo(f"data: {splits.streaming}")
    if splits.cache_hit is not None:
        typer.echo("data: decoded images " + ("loaded from cache" if splits.cache_hit else "decoded and cached"))
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
    if teacher.from_cache:
        how = "loaded from cache (no retraining)"
    elif spec.teacher.checkpoint is not None:
        tuned = spec.teacher.fine_tune_epochs
        how = f"loaded from {spec.teacher.checkpoint}, " + (f"fine-tuned {tuned} epoch{'s' * (tuned != 1)}" if tuned else "not fine-tuned")
        how += ", scored and cached"
    else:
        how = "trained and cached"
    m = teacher.metrics
    typer.echo(f"teacher {spec.teacher.arch}: {how} at {teacher.path}")
    typer.echo(
        f"teacher accuracy: val {m['val_accuracy']:.4f}, test {m['test_accuracy']:.4f} "
        f"(AUC val {m['val_auc']:.4f}, test {m['test_auc']:.4f})"
    )
    return splits, teacher, device


def _final_and_report(study, data, teacher, report_path: Path) -> None:
    from .report import summary_text, write_report
    from .search import final_candidates, final_comparison

    n_runs = len(final_candidates(study)) * data.spec.final.seeds
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
    workers: int = typer.Option(
        1, "--workers", "-w", min=0,
        help="Worker processes on this machine (1: in this process; 0: one per visible GPU). Each runs "
        "`kdsearch worker`; the final comparison and the report run once, here, when they are done.",
    ),
    threads: Optional[int] = ThreadsOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Run the study: teacher once, N trials, final comparison on the test split, report.html."""
    import optuna

    from .methods import METHODS
    from .search import TEACHER_ATTR, create_study, make_objective, prepare_study_data
    from .storage import spec_storage
    from .workers import worker_count

    spec, path = load_study_spec(
        spec_path, data_root=data_root, study=study_name, storage=storage, output_dir=output_dir, device=device,
        overrides=overrides,
    )
    quiet_optuna()
    url = spec.resolved_storage()

    if threads is not None and workers == 1:
        spec = with_runtime(spec, threads=threads)
    writable_dir(spec.resolved_output_dir(), "the output folder (--output-dir, output_dir in the spec)")
    store = spec_storage(spec, url)  # with heartbeats: a trial of a killed run is retried by the next run
    study = create_study(spec, store)  # a resume with other settings is refused before the teacher is built
    splits, teacher, dev = _prepare(spec)
    study.set_user_attr(TEACHER_ATTR, teacher.metrics)
    already = len(study.trials)
    if already:
        typer.echo(f"study {spec.name!r}: resuming, {already} trials already in {url}")
    n_workers = worker_count(workers, dev)
    if n_workers > 1:
        resume = resume_command(path, url, study=study_name, output_dir=output_dir, data_root=data_root,
                                overrides=overrides, workers=n_workers)  # fmt: skip
        _run_workers(spec, path, url, study, splits, teacher, dev, n_workers, trials or spec.search.trials, threads,
                     overrides or [], resume)  # fmt: skip
        return
    data = prepare_study_data(spec, splits, teacher, dev)
    if data.features != "not needed":
        typer.echo(f"teacher features for {', '.join(m for m in spec.search.methods if METHODS.get(m).needs_features)}: "
                   f"{data.features}")  # fmt: skip
    n = trials or spec.search.trials
    bar = tqdm(total=n, desc="trials", unit="trial")

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.update()
        try:
            bar.set_postfix(best=f"{study.best_value:.4f}", last=trial.state.name.lower())
        except ValueError:
            bar.set_postfix(last=trial.state.name.lower())

    resume = resume_command(path, url, study=study_name, output_dir=output_dir, data_root=data_root, overrides=overrides)

    def stop_if_requested(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if stop.requested:
            study.stop()

    try:
        with StopSignals() as stop:
            with shielded():  # Optuna's storage writes finish; a Ctrl-C interrupts the training (signals.py)
                study.optimize(make_objective(data), n_trials=n, callbacks=[on_trial, stop_if_requested])
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


def with_runtime(spec, *, data_root: Optional[Path] = None, device: Optional[str] = None, threads: Optional[int] = None,
                 overrides: Optional[list[str]] = None):  # fmt: skip
    """``spec`` with the overrides of the command line (validated like the file)."""
    from .spec import apply_overrides, spec_from_dict

    if data_root is None and not device and threads is None and not overrides:
        return spec
    raw = spec.model_dump(mode="json")
    if data_root is not None:
        raw["data"]["root"] = str(data_root)
    if device:
        raw["runtime"]["device"] = device
    if threads is not None:
        raw["runtime"]["threads"] = threads
    if overrides:
        raw = apply_overrides(raw, overrides)
    return spec_from_dict(raw, source="spec with --set" if overrides else "spec")


def _run_workers(spec, path, url, study, splits, teacher, dev, workers: int, trials: int, threads, overrides,
                 resume: str) -> None:  # fmt: skip
    """``run --workers N``: N ``kdsearch worker`` processes, one progress bar, then final comparison and report here."""
    import optuna

    from .search import prepare_study_data
    from .workers import failed_workers, finished_count, start_workers, stop_workers, wait_for_workers, worker_plan

    base = finished_count(study)
    total = base + trials
    logs = spec.resolved_output_dir() / "workers"
    plan = worker_plan(spec, dev, workers, threads)
    procs = start_workers(spec, path, url, plan, total=total, logs=logs, overrides=overrides, debug=STATE["debug"])
    where = ", ".join(f"{d}{' (GPU ' + e['CUDA_VISIBLE_DEVICES'] + ')' if e else ''}" for e, d, _ in plan)
    typer.echo(
        f"started {workers} workers ({where}; {plan[0][2]} thread{'s' * (plan[0][2] != 1)} each) until the study holds {total} finished "
        f"trials; logs in {logs}"
    )
    bar = tqdm(total=trials, desc=f"trials ({workers} workers)", unit="trial")

    def advance() -> None:
        bar.update(max(0, min(finished_count(study) - base, trials) - bar.n))

    with StopSignals() as stop:  # Ctrl-C, or a scheduler's TERM: stop the workers
        try:
            wait_for_workers(procs, lambda: stop.requested, advance)
        except KeyboardInterrupt:
            bar.close()
            typer.echo("\ninterrupted: stopping the workers (each marks its running trial FAILED)...", err=True)
            stop_workers([p for _, p, _ in procs])
            typer.echo(
                f"{finished_count(study)} finished trials are kept in {url}.\n"
                f"resume with: {resume}",
                err=True,
            )
            raise typer.Exit(130) from None
    advance()
    bar.close()
    failed = failed_workers(procs)
    for rank, rc, log in failed:
        tail = "\n  ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
        typer.echo(f"worker {rank} exited with code {rc}; the end of {log}:\n  {tail}", err=True)
    done = finished_count(study)
    if failed and len(failed) == len(procs) and not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise KdsearchError(f"every worker failed before a trial completed (see above); the study holds {done} finished trials")
    if done < total:
        typer.echo(f"warning: the study holds {done} of {total} finished trials", err=True)
    _final_and_report(study, prepare_study_data(spec, splits, teacher, dev), teacher, spec.resolved_output_dir() / "report.html")
    typer.echo(f"storage: {url}\nadd trials with: {resume}")
    if failed and done < total:
        raise typer.Exit(1)


@app.command()
@friendly
def worker(
    study_name: Optional[str] = StudyOpt,
    storage: Optional[str] = StorageOpt,
    spec_path: Optional[Path] = typer.Option(
        None, "--spec", "-s", help="Study TOML; creates the study when it does not exist yet (default: the spec stored in the study)."
    ),
    trials: Optional[int] = typer.Option(
        None, "--trials", "-n", min=1,
        help="Stop when the study holds this many finished (COMPLETE + PRUNED) trials in total, all workers together "
        "(default: search.trials).",
    ),
    rank: int = typer.Option(0, "--rank", min=0, help="This worker's number; its sampler seed is search.sampler_seed + rank."),
    device: Optional[str] = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    data_root: Optional[Path] = DataRootOpt,
    overrides: Optional[list[str]] = SetOpt,
    parent_pid: Optional[int] = typer.Option(
        None, "--parent-pid", hidden=True, help="Stop (as on Ctrl-C) when this process, the worker's parent, dies."
    ),
) -> None:
    """Join a study (this or another machine) and run trials until it holds --trials finished ones.

    No final comparison or report: run `kdsearch report` when the study is done (or use `run --workers N`).
    """
    with StopSignals() as stop:
        try:
            if parent_pid is not None:
                stop_with_parent(parent_pid)
            _worker(study_name, storage, spec_path, trials, rank, device, threads, data_root, overrides)
        except KeyboardInterrupt:
            with stop.shielded():  # a repeated signal does not cut the message short
                typer.echo(f"worker {rank}: interrupted; its running trial (if any) is marked FAILED, finished ones "
                           "are kept", err=True)  # fmt: skip
                raise typer.Exit(130) from None


def _worker(study_name, storage, spec_path, trials, rank, device, threads, data_root, overrides) -> None:
    import optuna

    from .search import TEACHER_ATTR, create_study, load_study, make_objective, prepare_study_data, study_spec
    from .storage import open_existing_storage, spec_storage
    from .workers import finished_count, join_study, work_on_study

    quiet_optuna()
    if spec_path is not None:
        spec, _ = load_study_spec(spec_path, data_root=data_root, study=study_name, storage=storage, device=device,
                                  overrides=overrides)  # fmt: skip
        spec = with_runtime(spec, threads=threads)
        url = spec.resolved_storage()
        store = spec_storage(spec, url)
        study = create_study(spec, store, rank)
    else:
        if storage is None:
            raise KdsearchError(
                "kdsearch worker needs --storage URL (plus --study NAME when the storage holds several studies), "
                "or --spec PATH to create the study"
            )
        url = storage
        found = load_study(study_name, open_existing_storage(url))
        spec = with_runtime(study_spec(found), data_root=data_root, device=device, threads=threads, overrides=overrides)
        store = spec_storage(spec, url)
        study = join_study(found.study_name, store, spec, rank)
    name = study.study_name
    total = trials or spec.search.trials
    typer.echo(f"worker {rank}: study {name!r} in {url}: {finished_count(study)} of {total} trials finished")
    splits, teacher_, dev = _prepare(spec)
    if study.user_attrs.get(TEACHER_ATTR) != teacher_.metrics:  # also after the study adopted new settings
        study.set_user_attr(TEACHER_ATTR, teacher_.metrics)
    data = prepare_study_data(spec, splits, teacher_, dev)

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = f" {trial.value:.4f}" if trial.value is not None else ""
        typer.echo(f"worker {rank}: trial {trial.number} {trial.state.name.lower()}{value} "
                   f"({finished_count(study)}/{total} finished)")  # fmt: skip

    waiting: list[int] = []

    def on_wait(running: int) -> None:
        if not waiting:
            typer.echo(f"worker {rank}: the last {running} trial(s) run in other workers; waiting for them "
                       "(a trial whose worker dies is retried here)")  # fmt: skip
        waiting.append(running)

    ran = work_on_study(
        study, store, url, make_objective(data), total, max_retry=spec.runtime.max_retry, rank=rank,
        callbacks=(on_trial,), poll_s=1.0, on_wait=on_wait,
    )  # fmt: skip
    typer.echo(
        f"worker {rank}: done, ran {ran} trials; the study holds {finished_count(study)} finished trials.\n"
        f"final comparison and report: kdsearch report --storage {url} --study {name}"
    )


@app.command()
@friendly
def dashboard(
    study_name: Optional[str] = StudyOpt,
    storage: Optional[str] = StorageOpt,
    spec_path: Optional[Path] = SpecOpt,
    output_dir: Optional[Path] = typer.Option(
        None, "--output-dir", "-o", help="Where report.html is read and artifacts/ kept (default: the study's output_dir)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (the dashboard has no login: keep it local)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0: any free one)."),
) -> None:
    """Watch the study live in optuna-dashboard; the report and the final comparison show as study artifacts."""
    from .dashboard import start_dashboard

    quiet_optuna()
    default_out = None
    if storage is None:
        spec, _ = load_study_spec(spec_path, study=study_name)
        storage, default_out = spec.resolved_storage(), spec.resolved_output_dir()
    server, notes = start_dashboard(storage, study_name=study_name, output_dir=output_dir, default_output_dir=default_out,
                                    host=host, port=port)  # fmt: skip
    for note in notes:
        typer.echo(note)
    typer.echo(f"dashboard: {server.url}  (storage {storage}; Ctrl-C to stop)")
    try:
        with StopSignals():  # also when started in the background (SIGINT inherited as ignored), and on TERM
            server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("dashboard stopped")
    finally:
        server.close()


@app.command()
@friendly
def teacher(
    spec_path: Optional[Path] = SpecOpt,
    data_root: Optional[Path] = DataRootOpt,
    device: Optional[str] = DeviceOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Train (or load from cache) the study's teacher alone and show its accuracy."""
    spec, _ = load_study_spec(spec_path, data_root=data_root, device=device, overrides=overrides)
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

    from .report import summary_text, write_report
    from .search import FINAL_ATTR, load_study, prepare_study_data, study_spec
    from .storage import open_existing_storage

    quiet_optuna()
    if storage is None:
        spec, _ = load_study_spec(spec_path, study=study_name)
        storage = spec.resolved_storage()
    study = load_study(study_name, open_existing_storage(storage))
    spec = with_runtime(study_spec(study), data_root=data_root, device=device)
    out = output or spec.resolved_output_dir() / "report.html"
    if out.is_dir():
        raise KdsearchError(f"--output {out} is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    writable_dir(out.parent, "the report's folder")
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
