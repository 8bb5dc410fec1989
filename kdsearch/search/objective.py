"""The search's training side: the per-trial objective (sample, distill, report, prune) and the final comparison.

Everything a trial needs to be reproduced is in its params (``method``, ``<method>_<param>``)
and user attrs (``seed``); the study's life in storage (create, join, load, best per method) is ``study.py``.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from ..config.catalog import searchable_method_names
from ..config.spec import StudentSpec, StudySpec
from ..data import Split, Splits, take
from ..distill.methods import METHODS, DistillBatch, build_method, unusable_methods
from ..distill.metrics import cost_row
from ..distill.teacher import Teacher, feature_cache_mb, teacher_features
from ..distill.train import Augment, EpochResult, LiveTeacher, TrainSet, TrialPlan, evaluate, fit, steps_per_epoch
from ..errors import KdsearchError, out_of_memory
from ..nets.models import FeatureTap, build_model, default_feature_layer, load_state, read_checkpoint
from ..signals import interruptible, shielded
from .front import dominated_by, over_budget
from .results import Candidate, CandidateRuns, Cost, FinalComparison, Scores, SeedRun, StudentCosts
from .study import best_of_each_method, best_trials_per_method, params_of, teacher_mode_of, value_of


@dataclass
class StudyData:
    """Device-resident tensors shared by every trial of one process."""

    spec: StudySpec
    splits: Splits
    device: torch.device
    teacher: Teacher
    distill_set: TrainSet  # labeled + unlabeled rows, with cached teacher logits (and features when they fit)
    labeled_set: TrainSet  # labeled rows only (scratch baseline)
    val: Split
    steps: int  # optimizer steps per epoch, the same for distilled and scratch students
    teacher_layer: str
    student_layer: str
    features: str  # how feature methods get teacher features: "cached (N MB)", "live (...)" or "not needed"
    student_init: dict[str, torch.Tensor] | None = None  # student.checkpoint, read once for every trial
    # [[student.candidates]]: name → this data for that student (same tensors; spec.student is the candidate's)
    students: dict[str, StudyData] = field(default_factory=dict)
    student_name: str | None = None  # the candidate this data trains (None: the study's one student)
    costs: StudentCosts | None = None  # the candidates' and the teacher's costs (prepare.study_data measures them)
    excluded: dict[str, str] = field(default_factory=dict)  # candidates over search.constraints → why

    def for_student(self, name: str | None) -> StudyData:
        """This data for candidate ``name`` (None, or a study without candidates: itself)."""
        if name is None or not self.students:
            return self
        try:
            return self.students[name]
        except KeyError:
            raise KdsearchError(
                f"student {name!r} is not a candidate of this study ({', '.join(self.students)})"
            ) from None


def prepare_study_data(spec: StudySpec, splits: Splits, teacher: Teacher, device: torch.device) -> StudyData:
    """Gather the student's pool and the teacher's cached outputs once, on ``device``.

    Streamed data (``ImageStore``) is not decoded here: trials decode their batches through the
    loader workers, while the teacher's logits and features stay computed once per image.
    Teacher features (for cosine/hint) are cached when a study uses such a method in ``cached``
    mode and they fit ``teacher.feature_cache_mb``; otherwise those trials run the teacher live.
    """
    pool = torch.cat([splits.labeled, splits.unlabeled])
    labeled = torch.zeros(len(pool), dtype=torch.bool)
    labeled[: len(splits.labeled)] = True
    teacher_layer = spec.teacher.feature_layer or default_feature_layer(spec.teacher.arch, lambda: teacher.model)
    student_layer = spec.student.feature_layer or default_feature_layer(
        spec.student.arch, lambda: build_student_model(spec, splits)
    )
    x_pool = take(splits.train.x, pool).to(device)  # streamed data stays on disk: a lazy ImageStore
    features, how = None, "not needed"
    if "cached" in spec.search.teacher_modes and any(METHODS.get(m).needs_features for m in spec.search.methods):
        probe = teacher_features(teacher.model, teacher_layer, x_pool[:1])
        mb = feature_cache_mb(len(pool), tuple(probe.shape[1:]))
        if mb <= spec.teacher.feature_cache_mb:
            features, how = teacher_features(teacher.model, teacher_layer, x_pool), f"cached in memory ({mb:.0f} MB)"
        else:
            how = f"teacher runs live ({mb:.0f} MB of features > teacher.feature_cache_mb = {spec.teacher.feature_cache_mb:g})"
    distill = TrainSet(x_pool, splits.train.y[pool], labeled, teacher.train_logits[pool], features).to(device)
    labeled_only = TrainSet(
        take(splits.train.x, splits.labeled),
        splits.train.y[splits.labeled],
        torch.ones(len(splits.labeled), dtype=torch.bool),
    ).to(device)
    steps = steps_per_epoch(len(pool), spec.student.batch_size)
    init = None if spec.student.checkpoint is None else read_checkpoint(Path(spec.student.checkpoint), role="student")
    val = splits.val.in_memory(device, spec.data.memory_budget_mb / 2)  # streamed data: decode val once if it fits
    data = StudyData(
        spec, splits, device, teacher, distill, labeled_only, val, steps, teacher_layer, student_layer, how, init
    )
    check_student(data)
    variants = {}
    for name, student in spec.student.candidate_specs().items():
        variant = candidate_data(data, name, student)
        check_student(variant)
        variants[name] = variant
    data.students = variants
    return data


def candidate_data(data: StudyData, name: str, student: StudentSpec) -> StudyData:
    """``data`` for candidate ``name`` (``student``: its resolved spec): the same tensors and teacher, its own
    architecture, feature layer and starting weights."""
    spec = data.spec.model_copy(update={"student": student})
    layer = student.feature_layer or default_feature_layer(student.arch, lambda: build_student_model(spec, data.splits))
    init = None if student.checkpoint is None else read_checkpoint(Path(student.checkpoint), role="student")
    return replace(data, spec=spec, student_layer=layer, student_init=init, students={}, student_name=name)


def build_student_model(spec: StudySpec, splits: Splits) -> nn.Module:
    """A fresh student of the spec's architecture for this data (registry, import path or the API's factory)."""
    s = spec.student
    return build_model(
        s.arch,
        splits.num_classes,
        splits.in_channels,
        splits.image_size,
        args=s.arch_args,
        pretrained=s.pretrained,
        role="student",
    )


def fresh_student(data: StudyData) -> nn.Module:
    """A new student of the study's architecture (its init from torch's current seed), with
    ``student.checkpoint``'s weights when the spec names one."""
    spec = data.spec
    model = build_student_model(spec, data.splits)
    if data.student_init is not None:
        load_state(
            model,
            data.student_init,
            role="student",
            arch=spec.student.arch,
            ignore=tuple(spec.student.checkpoint_ignore),
            source=spec.student.checkpoint,
        )
    return model


def check_student(data: StudyData) -> None:
    """Fail before the first trial on what every trial would fail on: a KdsearchError when the student's
    checkpoint does not fit it, or when a feature method's loss cannot pair the student's and the
    teacher's feature layers (tried on two images at the low end of the method's ranges)."""
    spec = data.spec
    model = fresh_student(data)
    methods = [m for m in spec.search.methods if METHODS.get(m).needs_features]
    if not methods:
        return
    model = model.to(data.device).eval()
    rows = torch.arange(min(2, len(data.distill_set)), device=data.device)
    x = data.distill_set.x[rows]  # an ImageStore decodes these two
    train = data.distill_set
    student_tap = FeatureTap(model, data.student_layer, role="student")
    try:
        with torch.no_grad():
            cached = train.teacher_features
            t_features = (
                cached[rows] if cached is not None else teacher_features(data.teacher.model, data.teacher_layer, x)
            )
            batch = DistillBatch(
                model(x).float(),
                train.y[rows],
                train.labeled[rows],
                train.teacher_logits[rows],
                student_tap.output.float(),
                t_features.float(),
            )
            for method in methods:
                impl = build_method(method)
                params = {name: r.low for name, r in spec.method_space(method).items()}
                try:
                    regressor = impl.make_regressor(
                        tuple(batch.student_features.shape[1:]), tuple(batch.teacher_features.shape[1:])
                    )
                    impl.loss(batch, params, regressor=None if regressor is None else regressor.to(data.device))
                except (ValueError, RuntimeError) as err:
                    if out_of_memory(err):
                        raise
                    raise KdsearchError(
                        f"method {method!r} cannot pair student.feature_layer {data.student_layer!r} (output "
                        f"{tuple(batch.student_features.shape[1:])}) with teacher.feature_layer {data.teacher_layer!r} "
                        f"(output {tuple(batch.teacher_features.shape[1:])}): {err}. Pick other layers, "
                        "or drop the method from search.methods"
                    ) from None
    finally:
        student_tap.remove()


def methods_for_task(spec: StudySpec, num_classes: int) -> tuple[StudySpec, dict[str, str]]:
    """The spec with the methods that cannot work on ``num_classes`` classes dropped, and why each was.

    A KdsearchError naming the reason and the methods that work when none of the study's would be left.
    """
    dropped = unusable_methods(spec.search.methods, num_classes)
    if not dropped:
        return spec, {}
    kept = [m for m in spec.search.methods if m not in dropped]
    if not kept:
        why = "; ".join(f"{m}: {reason}" for m, reason in dropped.items())
        works = [m for m in searchable_method_names() if not unusable_methods([m], num_classes)]
        raise KdsearchError(
            f"search.methods = {spec.search.methods} cannot distill on {num_classes} classes ({why}). "
            f"Use methods that work on {num_classes} classes: {', '.join(works)}"
        )
    return spec.model_copy(update={"search": spec.search.model_copy(update={"methods": kept})}), dropped


def trial_params(trial: optuna.trial.BaseTrial, spec: StudySpec) -> tuple[str, dict[str, float]]:
    """Sample a method, then only that method's parameters (named ``<method>_<param>``; a fixed one is
    stored with the others, but not searched)."""
    method = trial.suggest_categorical("method", spec.search.methods)
    params = {
        name: trial.suggest_float(f"{method}_{name}", r.low, r.high, log=r.log)
        for name, r in spec.method_space(method).items()
    }
    return method, params


def trial_teacher_mode(trial: optuna.trial.BaseTrial, spec: StudySpec) -> str:
    """The teacher-output mode: searched (param ``teacher_mode``) when the spec lists both."""
    modes = spec.search.teacher_modes
    return modes[0] if len(modes) == 1 else trial.suggest_categorical("teacher_mode", modes)


def plan_trial(
    data: StudyData, method: str, params: Mapping[str, float], seed: int, *, teacher_mode: str = "cached"
) -> TrialPlan:
    """How a student of this study trains with ``method`` and ``params`` under ``seed``.

    Teacher-free ``scratch`` trains on the labeled rows only, with as many steps as a distilled
    student. In ``consistent`` mode the student sees augmented batches and the teacher runs live
    on the same batch (scratch gets the same augmentation, so the comparison stays fair).
    """
    spec = data.spec
    impl = build_method(method)
    consistent = teacher_mode == "consistent"
    live = None
    if impl.needs_teacher and (consistent or (impl.needs_features and data.distill_set.teacher_features is None)):
        live = LiveTeacher(data.teacher.model, data.teacher_layer if impl.needs_features else None)
    return TrialPlan(
        impl,
        dict(params),
        seed,
        data.distill_set if impl.needs_teacher else data.labeled_set,
        epochs=spec.student.epochs,
        batch_size=spec.student.batch_size,
        lr=spec.student.lr,
        steps=data.steps,
        live_teacher=live,
        augment=Augment(spec.student.augment_shift, spec.student.augment_flip) if consistent else None,
        student_layer=data.student_layer,
        compile=spec.runtime.compile,
    )


def train_plan(
    data: StudyData,
    plan: TrialPlan,
    on_epoch: Callable[[EpochResult], None] | None = None,
    *,
    on_step: Callable[[], None] | None = None,
) -> tuple[nn.Module, list[EpochResult]]:
    """A fresh student (initial weights from ``plan.seed``) trained as ``plan`` says, scored on validation."""
    torch.manual_seed(plan.seed)
    model = fresh_student(data).to(data.device)
    return model, fit(model, plan, data.val, on_epoch=on_epoch, on_step=on_step)


def train_student(
    data: StudyData,
    method: str,
    params: Mapping[str, float],
    seed: int,
    on_epoch: Callable[[EpochResult], None] | None = None,
    *,
    teacher_mode: str = "cached",
    on_step: Callable[[], None] | None = None,
) -> tuple[nn.Module, list[EpochResult]]:
    """A fresh student (init, batch order, augmentation from ``seed``) trained with ``method`` (``plan_trial``)."""
    return train_plan(
        data, plan_trial(data, method, params, seed, teacher_mode=teacher_mode), on_epoch, on_step=on_step
    )


def train_each(data: StudyData, plans: list[TrialPlan]) -> list[nn.Module]:
    """``train_plan`` for each plan, one after the other (the final comparison's seeds, by default)."""
    return [train_plan(data, plan)[0] for plan in plans]


TrainFn = Callable[[TrialPlan, Callable[[EpochResult], None]], list[EpochResult]]


def make_objective(
    data: StudyData, *, train: TrainFn | None = None
) -> Callable[[optuna.Trial], float | tuple[float, float]]:
    """The trial function: sample, distill, report the objective each epoch (pruning), store attrs.

    ``train(plan, on_epoch) -> history`` trains the trial's ``TrialPlan``: ``train_plan`` on ``data`` by
    default, a stack of students in ``stacked_trials``.
    """
    spec = data.spec
    objective = spec.search.objective
    if train is not None and data.students:
        raise KdsearchError(
            "stacked trials train one student architecture; a study with candidates trains one at a time"
        )

    # which teacher, device and torch each trial ran with (workers of one study must share the teacher)
    provenance = {
        "teacher_sha256": data.teacher.digest,
        "device": str(data.device),
        "torch_version": torch.__version__,
    }

    students = list(data.students)
    multi = spec.multi_objective
    unmeasured = [n for n in students if data.costs is None or data.costs.students[n].value(spec.final.cost) is None]
    if multi and unmeasured:
        raise KdsearchError(
            f"search.objectives minimize {spec.final.cost}, which was not measured for {', '.join(unmeasured)}; "
            "pick another cost (params, flops, size_mb, latency_ms)"
        )

    def run(trial: optuna.Trial) -> float | tuple[float, float]:
        name = trial.suggest_categorical("student", students) if students else None  # first: a candidate's cost
        trial_data = data.for_student(name)
        method, params = trial_params(trial, spec)
        mode = trial_teacher_mode(trial, spec)
        seed = trial.user_attrs.get("seed", spec.search.trial_seed + trial.number)  # a retry keeps its seed
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("teacher_mode", mode)
        for key, value in provenance.items():
            trial.set_user_attr(key, value)
        start = time.perf_counter()

        def on_epoch(r: EpochResult) -> None:
            with shielded():  # a Ctrl-C here waits until the writes are done (signals.py)
                trial.set_user_attr("epochs_run", r.epoch)
                trial.set_user_attr("accuracy", r.accuracy)
                trial.set_user_attr("auc", r.auc)
                trial.set_user_attr("wall_time_s", time.perf_counter() - start)
                if multi:  # Optuna refuses report() in a multi-objective study: every trial runs to the end
                    curve.append(getattr(r, objective))
                    trial.set_user_attr("curve", curve)
                    return
                trial.report(getattr(r, objective), r.epoch)
                prune = trial.should_prune()
            if prune:
                raise optuna.TrialPruned(f"pruned after epoch {r.epoch}")

        curve: list[float] = []
        plan = plan_trial(trial_data, method, params, seed, teacher_mode=mode)
        with interruptible():  # only training is: Optuna's storage writes around it may run shielded
            history = train(plan, on_epoch) if train is not None else train_plan(trial_data, plan, on_epoch)[1]
        value = getattr(history[-1], objective)
        if multi:  # (metric, cost): the cost is the candidate's, measured once for the study
            return value, data.costs.students[name].value(spec.final.cost)
        return value

    return run


def with_costs(data: StudyData, costs: StudentCosts) -> StudyData:
    """``data`` with its candidates' ``costs``, and only the candidates within ``search.constraints`` (the others
    in ``excluded``, with why); a KdsearchError when none is."""
    budgets = data.spec.search.constraints
    figures = {name: c.model_dump() for name, c in costs.students.items() if name in data.students}
    excluded = over_budget(figures, budgets) if budgets else {}
    kept = {n: v for n, v in data.students.items() if n not in excluded}
    if not kept:
        shown = "; ".join(f"{n}: {why}" for n, why in excluded.items())
        raise KdsearchError(
            f"no candidate student is within search.constraints = {dict(budgets)} ({shown}); raise the budgets or "
            "add a smaller candidate"
        )
    return replace(data, costs=costs, students=kept, excluded=excluded)


def candidate_front(study: optuna.Study, data: StudyData) -> tuple[list[tuple[str, FrozenTrial]], dict[str, str]]:
    """The candidates on the study's **validation** front (their best trial's value against ``final.cost``; a
    cost not measured counts as infinite), cheapest first, each with its best trial; and name → why for the others."""
    f = data.spec.final
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    off: dict[str, str] = {n: f"over search.constraints ({why})" for n, why in data.excluded.items()}
    best: dict[str, FrozenTrial] = {}
    for name in data.students:
        per_method = best_of_each_method(t for t in trials if t.params.get("student") == name)
        if per_method:
            best[name] = max(per_method.values(), key=lambda t: (value_of(t), -t.number))
        else:
            off[name] = "no completed trial"
    costs = data.costs.students if data.costs is not None else {}

    def cost(name: str) -> float:
        value = costs[name].value(f.cost) if name in costs else None
        return math.inf if value is None or math.isnan(value) else float(value)

    beaten = dominated_by({n: (cost(n), float(value_of(t))) for n, t in best.items()})
    for name, by in beaten.items():
        if by is not None:
            off[name] = f"dominated on validation by {by} (no costlier in {f.cost}, at least as accurate)"
    on = sorted((n for n, by in beaten.items() if by is None), key=lambda n: (cost(n), n))
    return [(n, best[n]) for n in on], off


def front_candidates(study: optuna.Study, data: StudyData) -> list[Candidate]:
    """For each candidate on the validation front: its best trial, and a scratch student of the same architecture
    (an augmented one too when that trial ran in 'consistent' mode)."""
    out = []
    for name, t in candidate_front(study, data)[0]:
        method, params = params_of(t)
        mode = teacher_mode_of(t)
        out.append(
            Candidate(
                label=f"{name}: best {method}",
                method=method,
                params=params,
                trial=t.number,
                teacher_mode=mode,
                student=name,
            )
        )
        out.append(Candidate(label=f"{name}: scratch", method="scratch", student=name))
        if mode == "consistent":
            out.append(
                Candidate(label=f"{name}: scratch (augmented)", method="scratch", teacher_mode=mode, student=name)
            )
    return out


def cost_table(data: StudyData, teacher: Teacher, student: nn.Module) -> dict[str, dict[str, float]]:
    """Cost of the teacher and of the student architecture (scratch and distilled students share it); with
    candidates, of the teacher and each candidate, from the study's measured costs."""
    if data.students and data.costs is not None:
        fields = tuple(Cost.model_fields)
        rows = {}
        if data.costs.teacher is not None:
            rows[f"teacher ({data.spec.teacher.arch})"] = {k: getattr(data.costs.teacher, k) for k in fields}
        for name, c in data.costs.students.items():
            rows[f"student {name} ({c.arch})"] = {k: getattr(c, k) for k in fields}
        return rows
    sample = data.val.x[:1]
    return {
        f"teacher ({data.spec.teacher.arch})": cost_row(teacher.model, sample),
        f"student ({data.spec.student.arch})": cost_row(student, sample),
    }


def final_candidates(
    study: optuna.Study,
    *,
    unlabeled: bool = False,
    students: str = "each",
    baselines: Sequence[str] = ("scratch", "pseudo_label"),
    untuned_kd: Mapping[str, float] | None = None,
) -> list[Candidate]:
    """The students the final comparison retrains: the best trial of each method (``students = "each"``) or of
    the study (``"best"``), then the ``baselines``: scratch, the pseudo-label baseline when the student's pool has
    ``unlabeled`` images, KD at the ``untuned_kd`` recipe (``final.untuned_kd``), and an augmented scratch when a
    winner used ``consistent``."""
    best = best_trials_per_method(study)
    if students == "best" and best:
        top = max(best.values(), key=value_of)
        best = {top.params["method"]: top}
    candidates = [
        Candidate(label=f"best {m}", method=m, params=params_of(t)[1], trial=t.number, teacher_mode=teacher_mode_of(t))
        for m, t in sorted(best.items())
    ]
    if "untuned_kd" in baselines and untuned_kd is not None:
        recipe = dict(untuned_kd)
        label = f"untuned kd (T={recipe['temperature']:g}, α={recipe['alpha']:g})"
        candidates.append(Candidate(label=label, method="kd", params=recipe, baseline="untuned_kd"))
    candidates.append(Candidate(label="scratch", method="scratch"))
    if unlabeled and "pseudo_label" in baselines:
        candidates.append(Candidate(label="pseudo-label", method="pseudo_label"))
    if any(c.teacher_mode == "consistent" for c in candidates):
        candidates.append(Candidate(label="scratch (augmented)", method="scratch", teacher_mode="consistent"))
    return candidates


def study_candidates(study: optuna.Study, data: StudyData) -> list[Candidate]:
    """``final_candidates`` with the study's ``final`` settings and data (pseudo-label only with unlabeled images);
    with candidate students, ``front_candidates``."""
    if data.students:
        return front_candidates(study, data)
    f = data.spec.final
    return final_candidates(
        study,
        unlabeled=len(data.splits.unlabeled) > 0,
        students=f.students,
        baselines=f.baselines,
        untuned_kd=f.untuned_kd,
    )


SeedTrainer = Callable[[list[TrialPlan]], list[nn.Module]]


def final_comparison(
    data: StudyData,
    study: optuna.Study,
    teacher: Teacher,
    *,
    on_run: Callable[[str, int], None] | None = None,
    on_student: Callable[[Candidate, SeedRun, nn.Module], None] | None = None,
    train_seeds: SeedTrainer | None = None,
) -> FinalComparison:
    """Retrain the best trial of each method and the baselines with K seeds; score them and the teacher on **test**.

    This is the only place that touches the test split (besides export). Every candidate trains with the
    same seeds, so seed ``s`` gives each the same initial weights and batch order: differences are paired
    by seed (``stats.paired_difference``). The result is stored on the study (``FinalComparison.save``) and
    returned; a comparison run after an earlier one is numbered (``run``) and remembers how many trials the
    earlier ones saw. ``on_student(candidate, run, model)`` sees each retrained student (e.g. to keep it as
    files). ``train_seeds(plans)`` trains one candidate's students, one per seed's plan (default:
    ``train_plan`` seed after seed; ``stacked_trials`` passes one that trains them at once as a stack).
    """
    best = best_trials_per_method(study)
    if not best:
        raise KdsearchError(f"study {study.study_name!r} has no completed trial yet; run some trials first")
    f = data.spec.final
    seeds = list(range(f.first_seed, f.first_seed + f.seeds))
    run, earlier = FinalComparison.next_run_of(study)  # before the training: it needs no test scores
    test = data.splits.test.in_memory(data.device, data.spec.data.memory_budget_mb / 2)
    if train_seeds is None:
        train_seeds = functools.partial(train_each, data)
    students = []
    for candidate in study_candidates(study, data):
        runs = []
        at = data.for_student(candidate.student)  # a candidate student's architecture and weights
        plans = [
            plan_trial(at, candidate.method, candidate.params, seed, teacher_mode=candidate.teacher_mode)
            for seed in seeds
        ]
        trained = train_seeds(plans) if at is data else train_each(at, plans)
        for seed, model in zip(seeds, trained):
            acc, roc = evaluate(model, test)
            runs.append(SeedRun(seed=seed, accuracy=acc, auc=roc))
            if on_student is not None:
                on_student(candidate, runs[-1], model)
            if on_run is not None:
                on_run(candidate.label, seed)
        students.append(CandidateRuns(**candidate.model_dump(), runs=runs))
    teacher_acc, teacher_auc = evaluate(teacher.model, test)
    front: dict = {}
    if data.students:
        on, off = candidate_front(study, data)
        front = {
            "costs": data.costs,
            "front": [n for n, _ in on],
            "off_front": off,
            "front_cost": f.cost,
            "within_pp": f.within_pp,
        }
    result = FinalComparison(
        objective=data.spec.search.objective,
        seeds=seeds,
        students=students,
        teacher=Scores(accuracy=teacher_acc, auc=teacher_auc),
        cost=cost_table(data, teacher, model),
        n_complete_trials=len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
        run=run,
        earlier_runs_trials=earlier,
        **front,
    )
    result.save(study)
    return result
