"""What the commands do, callable from Python: prepare data and teacher, run a study, its final comparison,
the report and the exported students. ``cli.py`` parses arguments on top of this; ``kdsearch.run_study``
(``api.py``) calls it with objects instead of files.

Output goes through a ``Console`` (``echo`` for lines, ``progress`` for bars), so the CLI prints with
Typer and a notebook with ``print``.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from .errors import KdsearchError
from .progress import Progress, progress_bar
from .signals import StopSignals, shielded

DEFAULT_SPEC = Path("studies") / "fashion_mnist.toml"


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C (or TERM) stopped a study; the message says what is kept and how to go on."""


@dataclass
class Console:
    """Where a run's lines and progress bars go."""

    echo: Callable[..., None] = field(
        default=lambda text, err=False: print(text, file=sys.stderr if err else sys.stdout)
    )
    bars: bool = True

    def progress(self, total: int, desc: str, unit: str, *, leave: bool = True) -> Progress:
        """A bar on a terminal, a line at each tenth elsewhere (a log file, CI), nothing without ``bars``."""
        return progress_bar(total, desc, unit, leave=leave, enabled=self.bars)


def default_spec_path() -> Path:
    """``studies/fashion_mnist.toml`` in the working directory, else the one shipped beside the package."""
    if DEFAULT_SPEC.is_file():
        return DEFAULT_SPEC
    return Path(__file__).resolve().parents[1] / DEFAULT_SPEC


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


def with_runtime(
    spec,
    *,
    data_root: Optional[Path] = None,
    device: Optional[str] = None,
    threads: Optional[int] = None,
    overrides: Optional[list[str]] = None,
):
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


def writable_dir(path: Path, what: str) -> Path:
    """``path``, created when missing; a KdsearchError naming ``what`` (the setting) when no file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".kdsearch-probe-"):
            pass
    except OSError as err:
        raise KdsearchError(f"{what} {path} is not a writable folder ({err.strerror or err}); choose another") from None
    return path


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
    parts = ["kdsearch", "run", "--spec", str(path), "--storage", url]
    for flag, value in (("--study", study), ("--output-dir", output_dir), ("--data-root", data_root)):
        if value is not None:
            parts += [flag, str(value)]
    for override in overrides or []:
        parts += ["--set", override]
    if workers != 1:
        parts += ["--workers", str(workers)]
    return shlex.join(parts) + " --trials N"


def check_models(spec, splits) -> None:
    """Fail before the teacher is built when the user's own teacher or student (import path, whole-model file,
    Python object) cannot be built or does not map this data's images to (N, num_classes) logits."""
    from .models import MODELS, check_model_output
    from .search import build_student_model
    from .teacher import build_teacher_model

    shape = {"num_classes": splits.num_classes, "in_channels": splits.in_channels, "image_size": splits.image_size}
    for role, arch, build in (
        ("teacher", spec.teacher.arch, lambda: build_teacher_model(spec, splits)),
        ("student", spec.student.arch, lambda: build_student_model(spec, splits)),
    ):
        if arch not in MODELS:  # the registry's nets are known to fit any data they can be built for
            check_model_output(build(), role=role, arch=arch, **shape)


def prepare(
    spec, console: Console, *, datasets: Any = None, study: Any = None, url: Optional[str] = None, storage=None
):
    """Data and teacher, with a progress bar while the teacher trains; (splits, teacher, device).

    With ``study`` the teacher is the study's one teacher (``teacher_share.share_teacher``): with its storage
    ``url`` and ``storage``, the first process publishes its teacher; without, the recorded one is only used."""
    from .data import load_splits
    from .imports import use_python_path
    from .teacher import cache_root, prepare_teacher, teacher_steps
    from .train import configure_threads, resolve_device

    echo = console.echo
    use_python_path(spec.runtime.python_path)
    writable_dir(cache_root(spec), "the cache folder (runtime.cache_dir, else $KDSEARCH_CACHE or ~/.cache/kdsearch)")
    configure_threads(spec.runtime.threads)
    device = resolve_device(spec.runtime.device)  # KdsearchError for a device this machine lacks
    splits = load_splits(spec.data, cache_dir=cache_root(spec) / "data", datasets=datasets)
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
    from .search import methods_for_task

    _, dropped = methods_for_task(spec, splits.num_classes)  # nothing left: refused before the teacher is built
    for method, why in dropped.items():
        echo(f"warning: method {method} is dropped from this study: on {splits.num_classes} classes {why}")
    check_models(spec, splits)

    def build():
        bar = console.progress(teacher_steps(spec, splits), f"teacher {spec.teacher.arch}", "step", leave=False)
        try:
            return prepare_teacher(
                spec,
                splits,
                device,
                on_step=lambda: bar.update(),
                on_epoch=lambda r: bar.set_postfix(epoch=r.epoch, val_acc=f"{r.accuracy:.4f}"),
            )
        finally:
            bar.close()

    if study is None:
        teacher = build()
    else:
        from .teacher_share import share_teacher

        teacher = share_teacher(spec, splits, device, study, url=url, storage=storage, build=build, echo=echo)
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
    return splits, teacher, device


def echo_rerun_notice(study, echo: Callable[..., None]) -> None:
    """Say so when a study whose final comparison already touched the test split gets more trials."""
    from .results import FinalComparison

    final = FinalComparison.read(study)
    if final:
        echo(
            f"note: this study's final comparison already scored the test split (after {final.n_complete_trials} "
            "completed trials); the comparison at the end of this run is a re-run, labelled so in the report. "
            "Choosing among re-runs by their test scores would tune on the test split"
        )


def study_data(spec, splits, teacher, device, console: Console):
    """``prepare_study_data``, saying how feature methods get teacher features and which layers they read."""
    from .methods import METHODS
    from .models import MODELS
    from .search import methods_for_task, prepare_study_data

    spec, _ = methods_for_task(spec, splits.num_classes)  # prepare() said which it drops
    data = prepare_study_data(spec, splits, teacher, device)
    feature_methods = [m for m in spec.search.methods if METHODS.get(m).needs_features]
    if data.features != "not needed":
        console.echo(f"teacher features for {', '.join(feature_methods)}: {data.features}")
    if feature_methods:
        for role, model_spec, layer in (
            ("teacher", spec.teacher, data.teacher_layer),
            ("student", spec.student, data.student_layer),
        ):
            if model_spec.feature_layer is None and model_spec.arch not in MODELS:
                console.echo(
                    f"{role} feature layer: {layer!r} (the module before its last Linear; set "
                    f"{role}.feature_layer to choose another)"
                )
    return data


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
    from .study import best_trials_per_method, params_of

    return {
        m: {"params": params_of(t)[1], "value": t.value, "trial": t.number}
        for m, t in sorted(best_trials_per_method(study).items())
    }


def final_and_report(
    study, data, teacher, report_path: Path, console: Console, *, k: Optional[int] = None
) -> tuple[Any, dict]:
    """The final comparison on test (retraining with several seeds; K seeds at once as a stack when
    ``runtime.trials_per_device``, or ``k``, is above 1), the exported students, the report."""
    from .report import summary_text, write_report
    from .search import final_candidates, final_comparison
    from .stacked_trials import resolve_trials_per_device, stacked_seed_trainer
    from .students import StudentKeeper, export_summary

    f = data.spec.final
    n_runs = len(final_candidates(study, unlabeled=len(data.splits.unlabeled) > 0, students=f.students)) * f.seeds
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

    from .search import make_objective
    from .stacked_trials import resolve_trials_per_device, run_stacked_study
    from .storage import spec_storage
    from .study import create_study, finished_count
    from .workers import worker_count

    console = console or Console()
    echo = console.echo
    url = spec.resolved_storage()
    if threads is not None and workers == 1:
        spec = with_runtime(spec, threads=threads)
    writable_dir(spec.resolved_output_dir(), "the output folder (--output-dir, output_dir in the spec)")
    store = spec_storage(spec, url)  # with heartbeats: a trial of a killed run is retried by the next run
    study = create_study(spec, store)  # a resume with other settings is refused before the teacher is built
    splits, teacher, dev = prepare(spec, console, datasets=datasets, study=study, url=url, storage=store)
    already = len(study.trials)
    if already:
        echo(f"study {spec.name!r}: resuming, {already} trials already in {url}")
    echo_rerun_notice(study, echo)
    n = trials or spec.search.trials
    report_path = spec.resolved_output_dir() / "report.html"
    n_workers = worker_count(workers, dev)
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
            splits,
            teacher,
            dev,
            n_workers,
            n,
            threads,
            list(overrides),
            resume,
            console,
            debug,
        )
    data = study_data(spec, splits, teacher, dev, console)
    bar = console.progress(n, "trials", "trial")

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.update()
        try:
            bar.set_postfix(best=f"{study.best_value:.4f}", last=trial.state.name.lower())
        except ValueError:
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
                    run_stacked_study(study, store, url, data, k, total, callbacks=(on_trial,), echo=echo)
                else:
                    study.optimize(make_objective(data), n_trials=n, callbacks=[on_trial, stop_if_requested])
            bar.close()
            comparison, students = final_and_report(study, data, teacher, report_path, console, k=k)
    except KeyboardInterrupt:
        bar.close()
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        again = f"resume with: {resume}" if resume else "run the study again to add trials"
        raise StudyInterrupted(
            f"\ninterrupted: the running trial is marked FAILED; {done} finished trials are kept in {url}.\n{again}"
        ) from None
    if resume:
        echo(f"storage: {url}\nadd trials with: {resume}")
    return StudyResult(study, url, best_summary(study), comparison, report_path, students)


def _run_workers(
    spec,
    path,
    url,
    study,
    splits,
    teacher,
    dev,
    workers: int,
    trials: int,
    threads,
    overrides,
    resume: str,
    console: Console,
    debug: bool,
) -> StudyResult:
    """``run --workers N``: N ``kdsearch worker`` processes, one progress bar, then final comparison and report here."""
    import optuna

    from .study import finished_count
    from .workers import failed_workers, start_workers, stop_workers, wait_for_workers, worker_plan

    echo = console.echo
    base = finished_count(study)
    total = base + trials
    logs = spec.resolved_output_dir() / "workers"
    plan = worker_plan(spec, dev, workers, threads)
    procs = start_workers(spec, path, url, plan, total=total, logs=logs, overrides=overrides, debug=debug)
    where = ", ".join(f"{d}{' (GPU ' + e['CUDA_VISIBLE_DEVICES'] + ')' if e else ''}" for e, d, _ in plan)
    echo(
        f"started {workers} workers ({where}; {plan[0][2]} thread{'s' * (plan[0][2] != 1)} each) until the study "
        f"holds {total} finished trials; logs in {logs}"
    )
    bar = console.progress(trials, f"trials ({workers} workers)", "trial")

    def advance() -> None:
        bar.update(max(0, min(finished_count(study) - base, trials) - bar.n))

    with StopSignals() as stop:  # Ctrl-C, or a scheduler's TERM: stop the workers
        try:
            wait_for_workers(procs, lambda: stop.requested, advance)
        except KeyboardInterrupt:
            bar.close()
            echo("\ninterrupted: stopping the workers (each marks its running trial FAILED)...", err=True)
            stop_workers([p for _, p, _ in procs])
            raise StudyInterrupted(
                f"{finished_count(study)} finished trials are kept in {url}.\nresume with: {resume}"
            ) from None
    advance()
    bar.close()
    failed = failed_workers(procs)
    for rank, rc, log in failed:
        tail = "\n  ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
        echo(f"worker {rank} exited with code {rc}; the end of {log}:\n  {tail}", err=True)
    done = finished_count(study)
    if (
        failed
        and len(failed) == len(procs)
        and not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ):
        raise KdsearchError(
            f"every worker failed before a trial completed (see above); the study holds {done} finished trials"
        )
    if done < total:
        echo(f"warning: the study holds {done} of {total} finished trials", err=True)
    report_path = spec.resolved_output_dir() / "report.html"
    data = study_data(spec, splits, teacher, dev, console)
    comparison, students = final_and_report(study, data, teacher, report_path, console)
    echo(f"storage: {url}\nadd trials with: {resume}")
    return StudyResult(
        study, url, best_summary(study), comparison, report_path, students, finished=not (failed and done < total)
    )


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
) -> int:
    """``kdsearch worker``: join (or create) a study and run trials until it holds ``trials`` finished ones;
    no final comparison. Returns the number of trials this worker ran."""
    import optuna

    from .search import make_objective
    from .stacked_trials import resolve_trials_per_device, run_stacked_study
    from .storage import open_existing_storage, spec_storage
    from .study import create_study, finished_count, join_study, load_study, study_spec
    from .workers import work_on_study

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
        spec = with_runtime(study_spec(found), data_root=data_root, device=device, threads=threads, overrides=overrides)
        store = spec_storage(spec, url)
        study = join_study(found.study_name, store, spec, rank)
    name = study.study_name
    total = trials or spec.search.trials
    console.echo(f"worker {rank}: study {name!r} in {url}: {finished_count(study)} of {total} trials finished")
    splits, teacher_, dev = prepare(spec, console, study=study, url=url, storage=store)  # the study's one teacher
    data = study_data(spec, splits, teacher_, dev, console)

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = f" {trial.value:.4f}" if trial.value is not None else ""
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

    k = resolve_trials_per_device(data, echo=console.echo)
    if k > 1:
        ran = run_stacked_study(
            study, store, url, data, k, total, callbacks=(on_trial,), rank=rank, on_wait=on_wait, echo=console.echo
        )
    else:
        ran = work_on_study(
            study,
            store,
            url,
            make_objective(data),
            total,
            max_retry=spec.runtime.max_retry,
            rank=rank,
            callbacks=(on_trial,),
            poll_s=1.0,
            on_wait=on_wait,
        )
    console.echo(
        f"worker {rank}: done, ran {ran} trials; the study holds {finished_count(study)} finished trials.\n"
        f"final comparison and report: kdsearch report --storage {url} --study {name}"
    )
    return ran


def rebuild_report(study, spec, out: Path, console: Console) -> Path:
    """``report.html`` from storage; the final comparison (and the exported students) first when it is missing."""
    from .report import summary_text, write_report
    from .results import FinalComparison

    if out.is_dir():
        raise KdsearchError(f"--output {out} is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    writable_dir(out.parent, "the report's folder")
    if FinalComparison.read(study) is None:
        console.echo("no final comparison stored yet: running it now")
        splits, teacher, dev = prepare(spec, console, study=study)
        final_and_report(study, study_data(spec, splits, teacher, dev, console), teacher, out, console)
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
    from .students import export_one

    console = console or Console()
    if epochs is not None:
        spec = with_runtime(spec, overrides=[f"student.epochs={epochs}"])
    chosen = pick_trial(study, method=method, trial=trial)
    writable_dir(out, "--out")
    splits, teacher, dev = prepare(spec, console, datasets=datasets, study=study)
    data = study_data(spec, splits, teacher, dev, console)
    return export_one(data, study, chosen, out, train_on=train_on, console=console)


def pick_trial(study, *, method: Optional[str] = None, trial: Optional[int] = None):
    """The completed trial to export: number ``trial``, else the best of ``method``, else the best overall."""
    import optuna

    from .study import best_trials_per_method

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
    return max(best.values(), key=lambda t: t.value)


def given_data_spec(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A spec dict's ``data`` table for datasets handed over from Python: ``source = "python"``, without the
    fields that the python source does not read (``spec.SOURCE_FIELDS``) nor where its data comes from."""
    from .spec import SOURCE_FIELDS

    dropped = {name for name, sources in SOURCE_FIELDS.items() if "python" not in sources} | {"root", "factory", "args"}
    data = {k: v for k, v in raw.items() if k not in dropped}
    data["source"] = "python"
    return data
