"""The ``kdsearch`` command line (Typer): argument parsing and friendly errors on top of ``runner`` (which the
Python API calls too): run, worker, storage-proxy, dashboard, teacher, report, export."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer

from . import runner
from .errors import KdsearchError, first_line, out_of_memory
from .prepare import prepare
from .progress import Console, configure_logging
from .runner import load_study_spec, resume_command
from .signals import StopSignals, StudyInterrupted, stop_with_parent

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Search knowledge-distillation hyperparameters (method, temperature T, alpha) with Optuna.",
)
STATE = {"debug": False, "process_ends_after": False}
F = TypeVar("F", bound=Callable)


def friendly(command: F) -> F:
    """Turn a KdsearchError into one line on stderr and exit code 2 (the traceback only with --debug), and a
    Ctrl-C that no command handled itself (e.g. during teacher training) into one line and exit code 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            # from the first step: also when started with SIGINT ignored (nohup, a script's &); a Ctrl-C after the
            # command's work is done (the process shutting down) is ignored, not a kill by SIGINT
            with StopSignals(last=STATE["process_ends_after"]):
                return command(*args, **kwargs)
        except KdsearchError as err:
            if STATE["debug"]:
                raise
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except StudyInterrupted as stopped:
            if STATE["debug"]:
                raise
            typer.echo(str(stopped), err=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            if STATE["debug"]:
                raise
            typer.echo(
                "\ninterrupted: caches and trials are written whole or not at all; run the command again to go on",
                err=True,
            )
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
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also show what data reading did (sources, splits, streaming)."
    ),
) -> None:
    STATE["debug"] = debug
    configure_logging(verbose=verbose)


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


SpecOpt = typer.Option(None, "--spec", "-s", help="Study TOML (default: studies/fashion_mnist.toml).")
DataRootOpt = typer.Option(None, "--data-root", help="Folder holding the dataset files (overrides data.root).")
STORAGE_ENV = "KDSEARCH_STORAGE"  # = search.storage.STORAGE_ENV (not imported: --help stays light); workers get it
StorageOpt = typer.Option(
    None,
    "--storage",
    envvar=STORAGE_ENV,
    help="Optuna storage URL (default: SQLite next to the outputs). A URL with a password is better given as "
    "$KDSEARCH_STORAGE: command lines are visible to every user of the machine.",
)
StudyOpt = typer.Option(None, "--study", help="Study name (overrides the spec's name).")
OutOpt = typer.Option(None, "--output-dir", "-o", help="Where study.db and report.html go (default: runs/<name>).")
DeviceOpt = typer.Option(None, "--device", help="'cpu', 'cuda', 'cuda:N' or 'auto'.")
SetOpt = typer.Option(
    None, "--set", help="Override a spec field, TOML value: --set student.epochs=2 --set 'search.methods=[\"kd\"]'."
)
TrialsPerDeviceOpt = typer.Option(
    None,
    "--trials-per-device",
    "-k",
    help="Trials trained at once per process, stacked as one model: a number, or 'auto' (on a GPU: picked from a "
    "short probe; 1 on a CPU). Sets runtime.trials_per_device.",
)
ThreadsOpt = typer.Option(
    None,
    "--threads",
    min=1,
    help="torch CPU threads per process (with --workers: per worker; default cores // workers).",
)


def with_trials_per_device(overrides: Optional[list[str]], k: Optional[str]) -> Optional[list[str]]:
    """``--trials-per-device K`` as the ``--set runtime.trials_per_device=K`` it stands for (so worker processes get it too)."""
    if k is None:
        return overrides
    value = '"auto"' if k.strip().lower() == "auto" else k.strip()
    return [*(overrides or []), f"runtime.trials_per_device={value}"]


def console() -> Console:
    """Lines through Typer, progress bars through tqdm."""
    return Console(echo=lambda text, err=False: typer.echo(text, err=err))


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
        1,
        "--workers",
        "-w",
        min=0,
        help="Worker processes on this machine (1: in this process; 0: one per visible GPU). Each runs "
        "`kdsearch worker`; the final comparison and the report run once, here, when they are done.",
    ),
    threads: Optional[int] = ThreadsOpt,
    trials_per_device: Optional[str] = TrialsPerDeviceOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Run the study: teacher once, N trials, final comparison on the test split, report.html, students/."""
    overrides = with_trials_per_device(overrides, trials_per_device)
    spec, path = load_study_spec(
        spec_path,
        data_root=data_root,
        study=study_name,
        storage=storage,
        output_dir=output_dir,
        device=device,
        overrides=overrides,
    )
    from .config.load import defaults_unlike_the_default_study

    defaulted = defaults_unlike_the_default_study(path, overrides, runner.SHIPPED_DEFAULT_SPEC)
    if defaulted:
        console().echo(f"note: {path} leaves to built-in defaults: " + "; ".join(defaulted))
    quiet_optuna()
    url = spec.resolved_storage()
    resume = resume_command(
        path, url, study=study_name, output_dir=output_dir, data_root=data_root, overrides=overrides, workers=workers
    )
    result = runner.run(
        spec,
        trials=trials,
        workers=workers,
        threads=threads,
        console=console(),
        resume=resume,
        spec_path=path,
        overrides=overrides or [],
        debug=STATE["debug"],
    )
    if not result.finished:
        raise typer.Exit(1)


@app.command()
@friendly
def worker(
    study_name: Optional[str] = StudyOpt,
    storage: Optional[str] = typer.Option(
        None,
        "--storage",
        envvar=STORAGE_ENV,
        help="Optuna storage URL of the study (required without --spec; with --spec, default: SQLite next to the "
        "outputs); or $KDSEARCH_STORAGE, which keeps a password off the command line.",
    ),
    spec_path: Optional[Path] = typer.Option(
        None,
        "--spec",
        "-s",
        help="Study TOML; creates the study when it does not exist yet (default: the spec stored in the study).",
    ),
    trials: Optional[int] = typer.Option(
        None,
        "--trials",
        "-n",
        min=1,
        help="Stop when the study holds this many finished (COMPLETE + PRUNED) trials in total, all workers together "
        "(default: search.trials).",
    ),
    rank: int = typer.Option(
        0, "--rank", min=0, help="This worker's number; its sampler seed is search.sampler_seed + rank."
    ),
    device: Optional[str] = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    data_root: Optional[Path] = DataRootOpt,
    trials_per_device: Optional[str] = TrialsPerDeviceOpt,
    overrides: Optional[list[str]] = SetOpt,
    max_trials: Optional[int] = typer.Option(
        None, "--max-trials", min=1, help="Run at most this many trials in this worker, then exit (code 0)."
    ),
    stop_when_done: bool = typer.Option(
        False,
        "--stop-when-done",
        help="Exit (code 0) as soon as the study needs no more trials from this worker, instead of waiting while "
        "other workers run the last ones (a trial of a worker that dies is then retried by the others).",
    ),
    parent_pid: Optional[int] = typer.Option(
        None, "--parent-pid", hidden=True, help="Stop (as on Ctrl-C) when this process, the worker's parent, dies."
    ),
) -> None:
    """Join a study (this or another machine) and run trials until it holds --trials finished ones.

    No final comparison or report: run `kdsearch report` when the study is done (or use `run --workers N`).
    Exit codes, for job schedulers: 0 done, 130 interrupted (Ctrl-C, SIGTERM), 2 a problem with the study,
    its files or the storage (one line says which).
    """
    overrides = with_trials_per_device(overrides, trials_per_device)
    with StopSignals() as stop:
        try:
            if parent_pid is not None:
                stop_with_parent(parent_pid)
            quiet_optuna()
            runner.work(
                study_name=study_name,
                storage=storage,
                spec_path=spec_path,
                trials=trials,
                rank=rank,
                device=device,
                threads=threads,
                data_root=data_root,
                overrides=overrides,
                console=console(),
                max_trials=max_trials,
                stop_when_done=stop_when_done,
            )
        except KeyboardInterrupt:
            with stop.shielded():  # a repeated signal does not cut the message short
                typer.echo(
                    f"worker {rank}: interrupted; its running trial (if any) is marked FAILED, finished ones are kept",
                    err=True,
                )
                raise typer.Exit(130) from None


@app.command("storage-proxy")
@friendly
def storage_proxy(
    storage: str = typer.Option(
        ...,
        "--storage",
        envvar=STORAGE_ENV,
        help="The database the proxy stands for: postgresql://user:pass@host/db (or $KDSEARCH_STORAGE, which keeps "
        "the password off the command line); sqlite:///file.db for a single machine.",
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 for workers on other machines (no TLS, no login)."
    ),
    port: int = typer.Option(13000, "--port", min=1, max=65535, help="Port to listen on."),
    threads: int = typer.Option(
        64, "--threads", min=1, help="Calls served at once (each holds a database connection while it runs)."
    ),
) -> None:
    """Serve the study storage to hundreds of workers through Optuna's gRPC proxy: they connect with
    --storage grpc://HOST:PORT and the database sees one connection pool, this process's."""
    from .search.proxy import serve_proxy
    from .search.storage import open_storage, shown_url

    if (
        storage.startswith(("grpc://", "journal:"))
        or storage.startswith("sqlite:///:memory:")
        or storage == "sqlite://"
    ):
        raise KdsearchError(
            f"storage-proxy serves a database (postgresql://..., or sqlite:///file.db on one machine), not "
            f"{shown_url(storage)!r}: Optuna's proxy does not support journal files"
        )
    quiet_optuna()
    backend = open_storage(storage)

    def started(address: str) -> None:
        typer.echo(
            f"storage-proxy: serving {shown_url(storage)} on {host}:{port} ({threads} threads); workers connect with "
            f"--storage {address if host not in ('0.0.0.0', '::') else f'grpc://<this host>:{port}'}; Ctrl-C to stop"
        )

    try:
        with StopSignals():  # Ctrl-C, or a scheduler's TERM
            serve_proxy(backend, host, port, threads, started)
    except KeyboardInterrupt:
        typer.echo("storage-proxy stopped")


@app.command()
@friendly
def dashboard(
    study_name: Optional[str] = StudyOpt,
    storage: Optional[str] = StorageOpt,
    spec_path: Optional[Path] = SpecOpt,
    output_dir: Optional[Path] = typer.Option(
        None,
        "--output-dir",
        "-o",
        help="Where report.html is read and artifacts/ kept (default: the study's output_dir).",
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (the dashboard has no login: keep it local)."
    ),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0: any free one)."),
) -> None:
    """Watch the study live in optuna-dashboard; the report and the final comparison show as study artifacts."""
    from .report.dashboard import start_dashboard
    from .search.storage import shown_url

    quiet_optuna()
    default_out = None
    if storage is None:
        spec, _ = load_study_spec(spec_path, study=study_name)
        storage, default_out = spec.resolved_storage(), spec.resolved_output_dir()
    server, notes = start_dashboard(
        storage, study_name=study_name, output_dir=output_dir, default_output_dir=default_out, host=host, port=port
    )
    for note in notes:
        typer.echo(note)
    typer.echo(f"dashboard: {server.url}  (storage {shown_url(storage)}; Ctrl-C to stop)")
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
    prepare(spec, console())


@app.command()
@friendly
def report(
    study_name: Optional[str] = StudyOpt,
    storage: Optional[str] = StorageOpt,
    spec_path: Optional[Path] = SpecOpt,
    data_root: Optional[Path] = DataRootOpt,
    output: Optional[Path] = typer.Option(
        None, "--output", help="HTML file to write (default: <output_dir>/report.html)."
    ),
    device: Optional[str] = DeviceOpt,
) -> None:
    """Rebuild report.html from storage (runs the final comparison first if it is missing)."""
    study, spec = _stored_study(study_name, storage, spec_path, data_root, device)
    runner.rebuild_report(study, spec, output or spec.resolved_output_dir() / "report.html", console())


def _stored_study(study_name, storage, spec_path, data_root, device, overrides=None):
    """The study named on the command line (by --storage, else the spec's storage) and its stored spec."""
    from .search.storage import open_existing_storage
    from .search.study import load_study

    quiet_optuna()
    if storage is None:
        spec, _ = load_study_spec(spec_path, study=study_name)
        storage = spec.resolved_storage()
    study = load_study(study_name, open_existing_storage(storage))
    return study, runner.spec_of_study(study, data_root=data_root, device=device, overrides=overrides)


@app.command()
@friendly
def export(
    out: Path = typer.Option(
        ..., "--out", help="Folder for student.safetensors, .torchscript.pt, .onnx and card.json."
    ),
    study_name: Optional[str] = StudyOpt,
    storage: Optional[str] = StorageOpt,
    spec_path: Optional[Path] = SpecOpt,
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Export this method's best trial."),
    trial: Optional[int] = typer.Option(None, "--trial", min=0, help="Export this trial (by number)."),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", "-e", min=1, help="Train this many epochs (default: the study's)."
    ),
    train_on: str = typer.Option("train", "--train-on", help="'train' (the study's student pool) or 'train+val'."),
    data_root: Optional[Path] = DataRootOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Retrain a trial (default: the best) with the study's data and teacher, score it once on test, and write it
    as safetensors, TorchScript and ONNX (checked by onnxruntime) with a JSON card."""
    study, spec = _stored_study(study_name, storage, spec_path, data_root, device)
    runner.export_trial(
        study, spec, out, method=method, trial=trial, epochs=epochs, train_on=train_on, console=console()
    )


def main() -> None:
    """Console entry point: the process ends when the command does."""
    STATE["process_ends_after"] = True
    app()


if __name__ == "__main__":
    sys.exit(main())
