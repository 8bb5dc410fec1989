"""The study's life in storage: its attribute keys, sampler and pruner, create/join/load, the settings check,
and what a finished trial holds (method, params, teacher mode, best per method).

Reading or joining a study needs no torch: this module imports neither torch nor the training stack
(``search`` holds the objective and the final comparison).
"""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config.load import spec_from_dict
from ..config.spec import StudySpec
from ..errors import KdsearchError
from .pruners import build_pruner
from .samplers import BalancedStudentSampler
from .storage import shown_url, storage_contents
from .study_lock import is_lock_study

SPEC_ATTR = "spec"  # study user attr: the spec the study was created with (``model_dump(mode="json")``)
FINAL_ATTR = "final_comparison"  # study user attr: the last final comparison (``results.FinalComparison``)
TEACHER_ATTR = "teacher"  # study user attr: the teacher's validation scores (``results.TeacherScores``)
RECORD_ATTR = "teacher_artifact"  # study user attr: the study's one teacher (``results.TeacherRecord``)
COSTS_ATTR = "student_costs"  # study user attr: what each candidate student costs (``results.StudentCosts``)
CODE_ATTR = "code"  # study user attr: the sha256 of its user code and student weights (``nets.identity``)

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards ``search.trials``


def make_sampler(spec: StudySpec, rank: int = 0, *, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
    """TPE over the conditional space: ``multivariate`` models params jointly, ``group`` per method,
    ``constant_liar`` for parallel workers. With candidate students (``search.strategy = "per_candidate"``) each
    trial takes the student with the fewest trials (``BalancedStudentSampler``); ``"nsga2"``: NSGA-II.

    The seed is ``search.sampler_seed + rank`` for a new study; a process that joins a study
    already holding ``resumed_at`` trials gets a seed derived from all three, so a resumed run
    does not replay the random start-up trials of the first one.
    """
    seed = spec.search.sampler_seed + rank
    if resumed_at:
        seed = int(np.random.SeedSequence([spec.search.sampler_seed, rank, resumed_at]).generate_state(1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.search.strategy == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=NSGA2_POPULATION, seed=seed)
        # constant_liar: parallel workers see running trials as bad, so they do not sample near-duplicates;
        # the same TPE is multi-objective (MOTPE) in a study with two directions (search.strategy = "motpe")
        tpe = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if spec.student.candidates and not spec.multi_objective:  # per_candidate: each student in turn
        return BalancedStudentSampler(tpe, [c.name for c in spec.student.candidates])
    return tpe


NSGA2_POPULATION = 10  # search.strategy = "nsga2": small, for studies of tens of trials (benchmarks/bench_front.py)


def directions(spec: StudySpec) -> list[str]:
    """The study's directions: maximize the metric; with a multi-objective strategy, minimize the cost too."""
    return ["maximize", "minimize"] if spec.multi_objective else ["maximize"]


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner over epochs reported as steps 1, 2, ... (see ``pruners.build_pruner``)."""
    s = spec.search
    if spec.multi_objective:  # Optuna cannot prune a multi-objective study (trial.report raises)
        return optuna.pruners.NopPruner()
    return build_pruner(
        s.pruner,
        startup_trials=s.pruner_startup_trials,
        warmup_epochs=s.pruner_warmup_epochs,
        epochs=spec.student.epochs,
        per_student=bool(spec.student.candidates),
    )


# Spec fields that may differ between the runs of one study: they do not change what a trial measures.
RESUME_MAY_CHANGE = {
    "data.root",
    "data.download",
    "data.loader_workers",
    "data.memory_budget_mb",
    "data.stream",
    "search.trials",
    "search.sampler_seed",
    "teacher.feature_cache_mb",
    "teacher.checkpoint",  # where the file is, not what it holds: its sha256 is in the teacher's key
    "student.checkpoint",  # its sha256 is in the study's code record (check_same_code)
}
RESUME_SECTIONS = ("data", "teacher", "student", "search", "methods")


def stored_spec(spec: StudySpec) -> dict:
    """The spec as the study stores it (``SPEC_ATTR``): its JSON dump, a storage password masked (whoever reads the
    study, e.g. on the dashboard, must not learn it; a worker joining with ``--study`` is given the URL anyway)."""
    dumped = spec.model_dump(mode="json")
    if dumped.get("storage"):
        dumped["storage"] = shown_url(dumped["storage"])
    return dumped


_MISSING = object()


def spec_changes(stored: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """``field: old → new`` for each field that determines trial results and differs between two spec dicts. A
    field the stored spec lacks (added to kdsearch after the study was made) is no change while the new value is
    its default in ``defaults`` (``stored_spec(StudySpec())``): that default is what the study ran with."""
    changes: list[str] = []

    def walk(a: object, b: object, d: object, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                sub = d.get(key, _MISSING) if isinstance(d, dict) else _MISSING
                if key not in a and sub is not _MISSING and b.get(key) == sub:
                    continue  # a field newer than the study, at its default
                walk(a.get(key), b.get(key), sub, f"{where}.{key}" if where else key)
        elif a != b and where not in RESUME_MAY_CHANGE:
            changes.append(f"{where}: {a!r} → {b!r}")

    for section in RESUME_SECTIONS:
        walk(stored.get(section), new.get(section), (defaults or {}).get(section), section)
    return changes


def create_study(spec: StudySpec, storage: optuna.storages.BaseStorage | str, rank: int = 0) -> optuna.Study:
    """Create the spec's study, or load it when it exists (a rerun adds trials to it).

    A rerun must keep every setting that determines what a trial measures (data, teacher,
    student, search space, objective): otherwise it is a KdsearchError naming what changed
    (``check_same_settings``). A study of the same name that kdsearch did not make is refused.
    """
    with storage_contents():
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            directions=directions(spec),
            sampler=make_sampler(spec, rank),
            pruner=make_pruner(spec),
            load_if_exists=True,
        )
    if SPEC_ATTR not in study.user_attrs:
        if study.trials or study.directions != [optuna.study.StudyDirection[d.upper()] for d in directions(spec)]:
            raise KdsearchError(
                f"a study named {spec.name!r} that kdsearch did not make already exists in this storage; "
                "pick another name with --study NAME (or another --storage)"
            )
        study.set_user_attr(SPEC_ATTR, stored_spec(spec))
        name_objective(study, spec)
        return study
    check_same_settings(study, spec)
    name_objective(study, spec)
    return _reseed(study, spec, rank)


def join_study(name: str, storage: optuna.storages.BaseStorage, spec: StudySpec, rank: int = 0) -> optuna.Study:
    """Load an existing study with this worker's sampler (seeded from ``search.sampler_seed``, rank and
    the trials already there, see ``make_sampler``) and the spec's pruner; a spec whose ``--set`` changed
    a setting that determines trial results is refused (``check_same_settings``)."""
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=make_sampler(spec, rank), pruner=make_pruner(spec)
    )
    check_same_settings(study, spec)
    return _reseed(study, spec, rank)


def _reseed(study: optuna.Study, spec: StudySpec, rank: int) -> optuna.Study:
    """A resumed study gets a sampler seeded anew from the trials it holds (``make_sampler``)."""
    n = len(study.get_trials(deepcopy=False))
    if n:
        study.sampler = make_sampler(spec, rank, resumed_at=n)
    return study


def objective_name(spec: StudySpec) -> str:
    """The objective's name as the dashboard shows it, e.g. ``val_accuracy``."""
    return f"val_{spec.search.objective}"


def metric_names(spec: StudySpec) -> list[str]:
    """The study's objectives as the dashboard names them: ``val_accuracy``, and the cost (e.g. ``onnx_latency_ms``)
    in a multi-objective study, whose Pareto front the dashboard then draws."""
    return [objective_name(spec), spec.final.cost] if spec.multi_objective else [objective_name(spec)]


def name_objective(study: optuna.Study, spec: StudySpec) -> None:
    """Name the study's objectives (``study.set_metric_names``) so the dashboard does not call them "Objective 0"."""
    if study.metric_names != metric_names(spec):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(spec))


def best_trial_of(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial with the best objective value (the lowest number among equals), in a single- or
    multi-objective study; None before one completes."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if value_of(t) is not None]
    return max(done, key=lambda t: (value_of(t), -t.number)) if done else None


def value_of(frozen: FrozenTrial) -> float | None:
    """A trial's objective value (the validation metric), in a single- or multi-objective study; None if it has
    none (not complete)."""
    return frozen.values[0] if frozen.values else None


def settings_may_change(study: optuna.Study) -> bool:
    """Whether ``study`` may take new settings: it holds no finished, running or queued trial to compare with."""
    state = TrialState
    return not study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED, state.RUNNING, state.WAITING))


def check_same_settings(study: optuna.Study, spec: StudySpec) -> None:
    """KdsearchError naming what changed when ``spec`` differs from the study's stored spec in a setting
    that determines trial results; while the study holds no finished, running or queued trial (e.g. every
    one failed on a setting since fixed), it takes ``spec`` instead."""
    new = stored_spec(spec)
    changes = spec_changes(study.user_attrs.get(SPEC_ATTR, {}), new, stored_spec(StudySpec()))
    if not changes:
        return
    if settings_may_change(study):
        study.set_user_attr(SPEC_ATTR, new)  # nothing finished or under way to compare with: the new settings hold
        return
    more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""
    raise KdsearchError(
        f"study {study.study_name!r} already exists in this storage with other settings ({'; '.join(changes[:5])}{more}); "
        "trials run under different settings cannot be compared. Start a new study with --study NEW_NAME, "
        "or run this one with the settings it was created with"
    )


def recorded_code(study: optuna.Study) -> dict[str, dict[str, str]] | None:
    """What the study recorded of its code (``CODE_ATTR``): ``{field: {module or "file" or "python": sha256}}``;
    None for a study made before kdsearch recorded it."""
    found = study.user_attrs.get(CODE_ATTR)
    return dict(found) if isinstance(found, dict) else None


def _what(spec: StudySpec, field: str, what: str) -> str:
    if field.count(".") != 1:  # student.candidates.<name>.arch: the candidate's
        return f"{field} (its {'file' if what == 'file' else 'module ' + what})"
    section, attr = field.split(".")
    value = getattr(getattr(spec, section), attr)
    if what == "file":
        return f"{field} {value}"
    if what == "python":
        return f"the {section} factory handed to kdsearch.run_study"
    return f"{field} = {value!r} (its module {what})"


def check_same_code(study: optuna.Study, spec: StudySpec, code: Mapping[str, Mapping[str, str]]) -> None:
    """Record ``code`` (``nets.identity.code_identity``) in the study; a KdsearchError naming the file when a digest
    differs from the recorded one while the study holds trials to compare with (two students would mix)."""
    found = recorded_code(study)
    recorded = found or {}
    changed = [
        (field, what, recorded[field][what], sha)
        for field, digests in code.items()
        for what, sha in digests.items()
        if recorded.get(field, {}).get(what, sha) != sha
    ]
    if changed and not settings_may_change(study):
        field, what, old, new = changed[0]
        raise KdsearchError(
            f"{_what(spec, field, what)} is not what study {study.study_name!r} was run with (sha256 {old[:12]}… in "
            f"the study, {new[:12]}… now); trials of two different models cannot be compared. Start a new study "
            "with --study NEW_NAME, or put back the version the study was run with"
        )
    replaced = {field for field, *_ in changed}  # only reached when the study may take new settings
    merged = dict(recorded)
    for field, digests in code.items():
        merged[field] = dict(digests) if field in replaced else {**recorded.get(field, {}), **digests}
    if merged != recorded or found is None:
        study.set_user_attr(CODE_ATTR, merged)


def load_study(name: str | None, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Load a study by name (or the only one in the storage), with a clear error when absent."""
    with storage_contents():
        names = [
            s.study_name
            for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
            if not is_lock_study(s.study_name)
        ]
    if name is None:
        if len(names) != 1:
            listing = ", ".join(names) or "none"
            raise KdsearchError(f"the storage holds {len(names)} studies ({listing}); pick one with --study NAME")
        name = names[0]
    if name not in names:
        raise KdsearchError(f"no study {name!r} in this storage; it holds: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def study_spec(study: optuna.Study) -> StudySpec:
    """The spec the study was created with."""
    if SPEC_ATTR not in study.user_attrs:
        raise KdsearchError(f"study {study.study_name!r} was not created by kdsearch (it has no stored spec)")
    return spec_from_dict(study.user_attrs[SPEC_ATTR], source=f"study {study.study_name!r}")


def finished_count(study: optuna.Study) -> int:
    """How many trials count towards ``search.trials`` (COMPLETE + PRUNED)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def params_of(frozen: FrozenTrial) -> tuple[str, dict[str, float]]:
    """(method, params) of a finished trial, as ``search.trial_params`` sampled them."""
    method = frozen.params["method"]
    prefix = f"{method}_"
    return method, {k.removeprefix(prefix): v for k, v in frozen.params.items() if k.startswith(prefix)}


def teacher_mode_of(frozen: FrozenTrial) -> str:
    """The teacher-output mode a finished trial ran with."""
    return frozen.params.get("teacher_mode", frozen.user_attrs.get("teacher_mode", "cached"))


def best_trials_per_method(study: optuna.Study) -> dict[str, FrozenTrial]:
    """``best_of_each_method`` over the study's completed trials: the trials the final comparison retrains."""
    return best_of_each_method(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def best_of_each_method(trials: Iterable[FrozenTrial]) -> dict[str, FrozenTrial]:
    """The best completed trial of each method among ``trials``, by the objective (the lowest number among equals).

    The one definition of "best": the final comparison retrains these, the report's table shows them.
    """
    best: dict[str, FrozenTrial] = {}
    for t in sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number):
        m = t.params.get("method")
        if m is not None and value_of(t) is not None and (m not in best or value_of(t) > value_of(best[m])):
            best[m] = t
    return best
