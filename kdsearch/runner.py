"""What the commands do, callable from Python: prepare data and teacher, run a study, its final comparison,
the report and the exported students. ``cli.py`` parses arguments on top of this; ``kdsearch.run_study``
(``api.py``) calls it with objects instead of files.

Output goes through a ``Console`` (``echo`` for lines, ``progress`` for bars), so the CLI prints with
Typer and a notebook with ``print``.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from .errors import KdsearchError
from .prepare import Prepared, prepare, study_data, writable_dir
from .progress import Console
from .signals import StopSignals, StudyInterrupted, shielded

DEFAULT_SPEC = Path("studies") / "fashion_mnist.toml"
SHIPPED_DEFAULT_SPEC = Path(__file__).resolve().parents[1] / DEFAULT_SPEC  # the default study beside the package


def default_spec_path() -> Path:
    """``studies/fashion_mnist.toml`` in the working directory, else the one shipped beside the package."""
    if DEFAULT_SPEC.is_file():
        return DEFAULT_SPEC
    return SHIPPED_DEFAULT_SPEC


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
    from .config.load import apply_overrides, load_spec, spec_from_dict

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


def with_runtime(
    spec,
    *,
    data_root: Optional[Path] = None,
    device: Optional[str] = None,
    threads: Optional[int] = None,
    overrides: Optional[list[str]] = None,
):
    """``spec`` with the overrides of the command line (validated like the file)."""
    from .config.load import apply_overrides, spec_from_dict

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


def spec_of_study(
    study,
    *,
    data_root: Optional[Path] = None,
    device: Optional[str] = None,
    threads: Optional[int] = None,
    overrides: Optional[list[str]] = None,
):
    """The spec ``study`` stores, with this command's overrides, once its import paths are safe to import here
    (``nets.identity.check_importable_from_study``: user files as the study recorded them, no standard library)."""
    from .nets.identity import check_importable_from_study
    from .nets.imports import use_python_path
    from .search.study import recorded_code, study_spec

    spec = with_runtime(study_spec(study), data_root=data_root, device=device, threads=threads, overrides=overrides)
    use_python_path(spec.runtime.python_path)
    check_importable_from_study(spec, recorded_code(study), study.study_name)
    return spec


def resume_command(
    path: Path,
    url: str,
    *,
    study: Optional[str],
    output_dir: Optional[Path],
    data_root: Optional[Path],
    overrides: Optional[list[str]],
    workers: int = 1,
) -> str:
    """The ``kdsearch run`` line that adds trials to this study with the settings of this run (the spec and
    every option that changes it; ``--device`` and ``--threads`` may differ)."""
    from .search.storage import shown_url

    parts = ["kdsearch", "run", "--spec", str(path), "--storage", shown_url(url)]  # a password as ***
    for flag, value in (("--study", study), ("--output-dir", output_dir), ("--data-root", data_root)):
        if value is not None:
            parts += [flag, str(value)]
    for override in overrides or []:
        parts += ["--set", override]
    if workers != 1:
        parts += ["--workers", str(workers)]
    return shlex.join(parts) + " --trials N"


def echo_rerun_notice(study, echo: Callable[..., None]) -> None:
    """Say so when a study whose final comparison already touched the test split gets more trials."""
    from .search.results import FinalComparison

    final = FinalComparison.read(study)
    if final:
        echo(
            f"note: this study's final comparison already scored the test split (after {final.n_complete_trials} "
            "completed trials); the comparison at the end of this run is a re-run, labelled so in the report. "
            "Choosing among re-runs by their test scores would tune on the test split"
        )


@dataclass
class StudyResult:
    """What a study run leaves: the best trial per method (validation), the test comparison, the files."""

    study: Any  # optuna.Study
    storage: str
    best: dict[str, dict[str, Any]]  # method → {"params", "value", "trial"} (validation objective)
    comparison: Any  # results.FinalComparison: the final comparison on test (see search.final_comparison)
    report_path: Path | None
    students: dict[str, Any]  # method → export.ExportedStudent of the representative retrained student
    finished: bool = True  # False when a worker failed and the study holds fewer trials than asked


def best_summary(study) -> dict[str, dict[str, Any]]:
    """Method → params, validation value and trial number of its best completed trial."""
    from .search.study import best_trials_per_method, params_of, value_of

    return {
        m: {"params": params_of(t)[1], "value": value_of(t), "trial": t.number}
        for m, t in sorted(best_trials_per_method(study).items())
    }


def final_and_report(
    study, data, teacher, report_path: Path, console: Console, *, k: Optional[int] = None
) -> tuple[Any, dict]:
    """The final comparison on test (retraining with several seeds; K seeds at once as a stack when
    ``runtime.trials_per_device``, or ``k``, is above 1), the exported students, the report."""
    from .parallel.stacked_trials import resolve_trials_per_device, stacked_seed_trainer
    from .report.page import summary_text, write_report
    from .search.objective import final_comparison, study_candidates
    from .ship.students import StudentKeeper, export_summary

    f = data.spec.final
    n_runs = len(study_candidates(study, data)) * f.seeds
    keeper = StudentKeeper(data, study, report_path.parent / "students")
    bar = console.progress(n_runs, "final comparison on test", "run", leave=False)
    try:
        k = resolve_trials_per_device(data, echo=console.echo) if k is None else k
        result = final_comparison(
            data,
            study,
            teacher,
            on_run=lambda label, seed: bar.update(),
            on_student=keeper.keep,
            train_seeds=stacked_seed_trainer(data, k, echo=console.echo) if k > 1 else None,
        )
    finally:
        bar.close()
    exported = keeper.export(console)
    # saved again with the files: the first save (in final_comparison) keeps the scores if exporting fails
    result = result.model_copy(
        update={"exports": {m: export_summary(e, report_path.parent) for m, e in exported.items()}}
    )
    result.save(study)
    path = write_report(study, report_path)
    console.echo(summary_text(study))
    console.echo(f"report: {path}")
    return result, exported


def run(
    spec,
    *,
    trials: Optional[int] = None,
    workers: int = 1,
    threads: Optional[int] = None,
    console: Console | None = None,
    resume: str = "",
    spec_path: Optional[Path] = None,
    overrides: Sequence[str] = (),
    datasets: Any = None,
    debug: bool = False,
) -> StudyResult:
    """Run the study: teacher once, N trials, final comparison on the test split, report.html, students.

    ``resume`` is the command line printed to add trials; ``spec_path`` and ``overrides`` are what
    ``workers > 1`` hands its worker processes. Ctrl-C raises ``StudyInterrupted`` after the running
    trial is marked FAILED (finished trials are kept).
    """
    import optuna

    from .parallel.local_workers import worker_count
    from .parallel.stacked_trials import resolve_trials_per_device, run_stacked_study
    from .parallel.workers import WorkerLoop, claiming
    from .search.objective import make_objective
    from .search.storage import shown_url, spec_storage
    from .search.study import best_trial_of, create_study, finished_count, value_of

    console = console or Console()
    echo = console.echo
    url = spec.resolved_storage()
    if threads is not None and workers == 1:
        spec = with_runtime(spec, threads=threads)
    writable_dir(spec.resolved_output_dir(), "the output folder (--output-dir, output_dir in the spec)")
    store = spec_storage(spec, url)  # with heartbeats: a trial of a killed run is retried by the next run
    study = create_study(spec, store)  # a resume with other settings is refused before the teacher is built
    prepared = prepare(spec, console, datasets=datasets, study=study, url=url, storage=store)
    already = len(study.trials)
    if already:
        echo(f"study {spec.name!r}: resuming, {already} trials already in {shown_url(url)}")
    echo_rerun_notice(study, echo)
    n = trials or spec.search.trials
    report_path = spec.resolved_output_dir() / "report.html"
    n_workers = worker_count(workers, prepared.device)
    if n_workers > 1:
        if spec_path is None or "python" in (spec.teacher.arch, spec.student.arch) or datasets is not None:
            raise KdsearchError(
                "workers > 1 run `kdsearch worker` processes from the study file; models and data handed over as "
                "Python objects cannot reach them: use workers=1, or name them by import path in the study file"
            )
        return _run_workers(
            spec,
            spec_path,
            url,
            study,
            prepared,
            n_workers,
            n,
            threads,
            list(overrides),
            resume,
            console,
            debug,
        )
    data = study_data(prepared, console, study=study)
    bar = console.progress(n, "trials", "trial")

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.update()
        try:
            bar.set_postfix(best=f"{value_of(best_trial_of(study)):.4f}", last=trial.state.name.lower())
        except (ValueError, TypeError):
            bar.set_postfix(last=trial.state.name.lower())

    def stop_if_requested(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if stop.requested:
            study.stop()

    try:
        with StopSignals() as stop:
            k = resolve_trials_per_device(data, echo=echo)
            with shielded():  # Optuna's storage writes finish; a Ctrl-C interrupts the training (signals.py)
                if k > 1:
                    total = finished_count(study) + n
                    loop = WorkerLoop.of_runtime(data.spec.runtime, callbacks=(on_trial,))
                    run_stacked_study(study, store, url, data, k, total, loop=loop, echo=echo)
                else:
                    study.optimize(claiming(make_objective(data)), n_trials=n, callbacks=[on_trial, stop_if_requested])
            bar.close()
            comparison, students = final_and_report(study, data, prepared.teacher, report_path, console, k=k)
    except KeyboardInterrupt:
        bar.close()
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        again = f"resume with: {resume}" if resume else "run the study again to add trials"
        raise StudyInterrupted(
            f"\ninterrupted: the running trial is marked FAILED; {done} finished trials are kept in {shown_url(url)}.\n{again}"
        ) from None
    if resume:
        echo(f"storage: {shown_url(url)}\nadd trials with: {resume}")
    return StudyResult(study, url, best_summary(study), comparison, report_path, students)


def _run_workers(
    spec,
    path,
    url,
    study,
    prepared: Prepared,
    workers: int,
    trials: int,
    threads,
    overrides,
    resume: str,
    console: Console,
    debug: bool,
) -> StudyResult:
    """``run --workers N``: the worker processes (``local_workers.run_worker_processes``), then the final comparison
    and report here."""
    from .parallel.local_workers import run_worker_processes
    from .search.storage import shown_url

    finished = run_worker_processes(
        spec, path, url, study, prepared.device, workers, trials, threads, overrides, resume, console, debug
    )
    report_path = spec.resolved_output_dir() / "report.html"
    comparison, students = final_and_report(
        study, study_data(prepared, console, study=study), prepared.teacher, report_path, console
    )
    console.echo(f"storage: {shown_url(url)}\nadd trials with: {resume}")
    return StudyResult(study, url, best_summary(study), comparison, report_path, students, finished=finished)


def work(
    *,
    study_name: Optional[str],
    storage: Optional[str],
    spec_path: Optional[Path],
    trials: Optional[int],
    rank: int,
    device: Optional[str],
    threads: Optional[int],
    data_root: Optional[Path],
    overrides: Optional[list[str]],
    console: Console,
    max_trials: Optional[int] = None,
    stop_when_done: bool = False,
) -> int:
    """``kdsearch worker``: join (or create) a study and run trials until it holds ``trials`` finished ones (or this
    worker ran ``max_trials``; with ``stop_when_done``, also when the last ones run in other workers); no final
    comparison. Returns the number of trials this worker ran. ``parallel/simulate.py``'s environment variables
    replace the training by a sleep (the soak harness)."""
    import optuna

    from .parallel import simulate
    from .parallel.stacked_trials import resolve_trials_per_device, run_stacked_study
    from .parallel.workers import TrialBudget, TrialSlot, WorkerLoop, work_on_study
    from .search.objective import make_objective
    from .search.storage import open_existing_storage, shown_url, spec_storage
    from .search.study import create_study, finished_count, join_study, load_study, value_of

    if spec_path is not None:
        spec, _ = load_study_spec(
            spec_path, data_root=data_root, study=study_name, storage=storage, device=device, overrides=overrides
        )
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
        spec = spec_of_study(found, data_root=data_root, device=device, threads=threads, overrides=overrides)
        store = spec_storage(spec, url)
        study = join_study(found.study_name, store, spec, rank)
    name = study.study_name
    stats = simulate.StorageStats(store) if os.environ.get(simulate.STATS_ENV) else None
    if stats is not None:
        stats.time_slot(TrialSlot)
    total = trials or spec.search.trials
    console.echo(
        f"worker {rank}: study {name!r} in {shown_url(url)}: {finished_count(study)} of {total} trials finished"
    )
    data = study_data(
        prepare(spec, console, study=study, url=url, storage=store), console, study=study
    )  # the study's one teacher

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = f" {value_of(trial):.4f}" if value_of(trial) is not None else ""
        console.echo(
            f"worker {rank}: trial {trial.number} {trial.state.name.lower()}{value} "
            f"({finished_count(study)}/{total} finished)"
        )

    waiting: list[int] = []

    def on_wait(running: int) -> None:
        if not waiting:
            console.echo(
                f"worker {rank}: the last {running} trial(s) run in other workers; waiting for them "
                "(a trial whose worker dies is retried here)"
            )
        waiting.append(running)

    budget = TrialBudget(max_trials) if max_trials is not None else None
    loop = WorkerLoop.of_runtime(
        spec.runtime, budget=budget, stop_when_done=stop_when_done, rank=rank, on_wait=on_wait, callbacks=(on_trial,)
    )
    bounds = simulate.epoch_seconds()
    if bounds is not None:
        simulate.dump_stacks_on_usr1()
    try:
        if bounds is not None:  # the soak harness: training is a sleep, K trial threads without a stack
            k = spec.runtime.trials_per_device if isinstance(spec.runtime.trials_per_device, int) else 1
            console.echo(f"worker {rank}: simulated training ({simulate.EPOCH_ENV}), {k} trial threads")
            objective = make_objective(data, train=simulate.simulated_training(bounds))
            fast = replace(loop, poll_s=0.5)
            ran = simulate.run_threads(k, lambda: work_on_study(study, store, url, objective, total, fast))
        elif (k := resolve_trials_per_device(data, echo=console.echo)) > 1:
            ran = run_stacked_study(study, store, url, data, k, total, loop=loop, echo=console.echo)
        else:
            ran = work_on_study(study, store, url, make_objective(data), total, replace(loop, poll_s=1.0))
    finally:
        if stats is not None:
            stats.write(Path(os.environ[simulate.STATS_ENV]), rank)
    console.echo(
        f"worker {rank}: done, ran {ran} trials; the study holds {finished_count(study)} finished trials.\n"
        f"final comparison and report: kdsearch report --storage {shown_url(url)} --study {name}"
    )
    return ran


def rebuild_report(study, spec, out: Path, console: Console) -> Path:
    """``report.html`` from storage; the final comparison (and the exported students) first when it is missing."""
    from .report.page import summary_text, write_report
    from .search.results import FinalComparison

    if out.is_dir():
        raise KdsearchError(f"--output {out} is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    writable_dir(out.parent, "the report's folder")
    try:
        missing = FinalComparison.read(study) is None
    except KdsearchError as err:  # written by another version or edited: computed again, as a re-run
        console.echo(f"warning: {err}", err=True)
        missing = True
    if missing:
        console.echo("no readable final comparison stored: running it now")
        prepared = prepare(spec, console, study=study)
        final_and_report(study, study_data(prepared, console, study=study), prepared.teacher, out, console)
        return out
    path = write_report(study, out)
    console.echo(summary_text(study))
    console.echo(f"report: {path}")
    return path


def export_trial(
    study,
    spec,
    out: Path,
    *,
    method: Optional[str] = None,
    trial: Optional[int] = None,
    epochs: Optional[int] = None,
    train_on: str = "train",
    console: Console | None = None,
    datasets: Any = None,
) -> Any:
    """Retrain one trial's settings (default: the study's best; ``method``: that method's best; ``trial``: by
    number) with the study's data and teacher, optionally for ``epochs`` and on ``train+val``; score it once
    on test and write safetensors, TorchScript, ONNX and a card into ``out``. Returns the ExportedStudent."""
    from .ship.students import export_one

    console = console or Console()
    if epochs is not None:
        spec = with_runtime(spec, overrides=[f"student.epochs={epochs}"])
    chosen = pick_trial(study, method=method, trial=trial)
    writable_dir(out, "--out")
    data = study_data(prepare(spec, console, datasets=datasets, study=study), console, study=study)
    return export_one(data, study, chosen, out, train_on=train_on, console=console)


def pick_trial(study, *, method: Optional[str] = None, trial: Optional[int] = None):
    """The completed trial to export: number ``trial``, else the best of ``method``, else the best overall."""
    import optuna

    from .search.study import best_trials_per_method, value_of

    if method is not None and trial is not None:
        raise KdsearchError("give --method or --trial, not both")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise KdsearchError(f"study {study.study_name!r} has no completed trial to export; run some trials first")
    if trial is not None:
        found = [t for t in complete if t.number == trial]
        if not found:
            numbers = ", ".join(str(t.number) for t in complete[:20])
            raise KdsearchError(f"trial {trial} is not a completed trial of {study.study_name!r}; completed: {numbers}")
        return found[0]
    best = best_trials_per_method(study)
    if method is not None:
        if method not in best:
            raise KdsearchError(
                f"no completed {method!r} trial in {study.study_name!r}; methods with one: {', '.join(best)}"
            )
        return best[method]
    return max(best.values(), key=value_of)


def given_data_spec(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A spec dict's ``data`` table for datasets handed over from Python: ``source = "python"``, without the
    fields that the python source does not read (``spec.SOURCE_FIELDS``) nor where its data comes from."""
    from .config.spec import SOURCE_FIELDS

    dropped = {name for name, sources in SOURCE_FIELDS.items() if "python" not in sources} | {"root", "factory", "args"}
    data = {k: v for k, v in raw.items() if k not in dropped}
    data["source"] = "python"
    return data
