"""The Optuna study: storage, sampler, pruner, the per-trial objective and the final comparison.

Everything a trial needs to be reproduced is in its params (``method``, ``<method>_<param>``)
and user attrs (``seed``); the spec is stored on the study, so storage alone rebuilds a report.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import optuna
import torch
from torch import nn

from .data import Split, Splits
from .errors import KdsearchError
from .methods import build_method
from .models import build_model
from .spec import StudySpec, spec_from_dict
from .teacher import Teacher
from .train import EpochResult, TrainSet, evaluate, fit, steps_per_epoch

SPEC_ATTR = "spec"
FINAL_ATTR = "final_comparison"
TEACHER_ATTR = "teacher"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: ``journal:///file`` or any RDB URL (SQLite gets a busy timeout)."""
    try:
        if url.startswith("journal:///"):
            path = Path(url.removeprefix("journal://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs: dict = {}
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs = {"connect_args": {"timeout": 60}}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except (ImportError, ModuleNotFoundError) as err:
        raise KdsearchError(f"storage {url!r} needs a driver that is not installed ({err}); install it with pip") from None
    except Exception as err:  # sqlalchemy raises many types for bad URLs and unreachable servers
        reason = str(err).splitlines()[0]
        raise KdsearchError(
            f"cannot open storage {url!r}: {reason}; check the URL (sqlite:///path.db, journal:///path.log, "
            "postgresql://user:pass@host/db) and that the server is reachable"
        ) from None


def make_sampler(spec: StudySpec, rank: int = 0) -> optuna.samplers.BaseSampler:
    """TPE over the conditional space: ``multivariate`` models params jointly, ``group`` per method."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=spec.search.sampler_seed + rank, multivariate=True, group=True)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    s = spec.search
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_epochs)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.student.epochs)
    return optuna.pruners.NopPruner()


def create_study(spec: StudySpec, storage: optuna.storages.BaseStorage | str, rank: int = 0) -> optuna.Study:
    """Create the spec's study, or load it when it exists (a rerun adds trials to it)."""
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction="maximize",
        sampler=make_sampler(spec, rank),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
    return study


def load_study(name: str | None, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Load a study by name (or the only one in the storage), with a clear error when absent."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
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


@dataclass
class StudyData:
    """Device-resident tensors shared by every trial of one process."""

    spec: StudySpec
    splits: Splits
    device: torch.device
    distill_set: TrainSet  # labeled + unlabeled rows, with cached teacher logits
    labeled_set: TrainSet  # labeled rows only (scratch baseline)
    val: Split
    steps: int  # optimizer steps per epoch, the same for distilled and scratch students


def prepare_study_data(spec: StudySpec, splits: Splits, teacher: Teacher, device: torch.device) -> StudyData:
    """Gather the student's pool and the teacher's cached logits once, on ``device``."""
    pool = torch.cat([splits.labeled, splits.unlabeled])
    labeled = torch.zeros(len(pool), dtype=torch.bool)
    labeled[: len(splits.labeled)] = True
    distill = TrainSet(splits.train.x[pool], splits.train.y[pool], labeled, teacher.train_logits[pool]).to(device)
    labeled_only = TrainSet(
        splits.train.x[splits.labeled], splits.train.y[splits.labeled], torch.ones(len(splits.labeled), dtype=torch.bool)
    ).to(device)
    steps = steps_per_epoch(len(pool), spec.student.batch_size)
    return StudyData(spec, splits, device, distill, labeled_only, splits.val.to(device), steps)


def trial_params(trial: optuna.trial.BaseTrial, spec: StudySpec) -> tuple[str, dict[str, float]]:
    """Sample a method, then only that method's parameters (named ``<method>_<param>``)."""
    method = trial.suggest_categorical("method", spec.search.methods)
    params = {
        name: trial.suggest_float(f"{method}_{name}", r.low, r.high, log=r.log)
        for name, r in spec.method_space(method).items()
    }
    return method, params


def params_of(frozen: optuna.trial.FrozenTrial) -> tuple[str, dict[str, float]]:
    """(method, params) of a finished trial, as ``trial_params`` sampled them."""
    method = frozen.params["method"]
    prefix = f"{method}_"
    return method, {k.removeprefix(prefix): v for k, v in frozen.params.items() if k.startswith(prefix)}


def train_student(
    data: StudyData,
    method: str,
    params: Mapping[str, float],
    seed: int,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> tuple[nn.Module, list[EpochResult]]:
    """A fresh student (init and batch order from ``seed``) trained with ``method``.

    Teacher-free ``scratch`` trains on the labeled rows only, with as many steps as a distilled student.
    """
    spec, splits = data.spec, data.splits
    torch.manual_seed(seed)
    model = build_model(spec.student.arch, splits.num_classes, splits.in_channels, splits.image_size).to(data.device)
    impl = build_method(method)
    train = data.distill_set if impl.needs_teacher else data.labeled_set
    history = fit(
        model,
        impl,
        params,
        train,
        data.val,
        epochs=spec.student.epochs,
        batch_size=spec.student.batch_size,
        lr=spec.student.lr,
        seed=seed,
        steps=data.steps,
        on_epoch=on_epoch,
    )
    return model, history


def make_objective(data: StudyData) -> Callable[[optuna.Trial], float]:
    """The trial function: sample, distill, report the objective each epoch (pruning), store attrs."""
    spec = data.spec
    objective = spec.search.objective

    def run(trial: optuna.Trial) -> float:
        method, params = trial_params(trial, spec)
        seed = spec.search.trial_seed + trial.number
        trial.set_user_attr("seed", seed)
        start = time.perf_counter()

        def on_epoch(r: EpochResult) -> None:
            trial.set_user_attr("epochs_run", r.epoch)
            trial.set_user_attr("accuracy", r.accuracy)
            trial.set_user_attr("auc", r.auc)
            trial.set_user_attr("wall_time_s", time.perf_counter() - start)
            trial.report(getattr(r, objective), r.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {r.epoch}")

        _, history = train_student(data, method, params, seed, on_epoch)
        return getattr(history[-1], objective)

    return run


def best_trials_per_method(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """The best completed trial of each method (by the objective)."""
    best: dict[str, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        m = t.params["method"]
        if m not in best or t.value > best[m].value:
            best[m] = t
    return best


def final_comparison(
    data: StudyData,
    study: optuna.Study,
    teacher: Teacher,
    *,
    on_run: Callable[[str, int], None] | None = None,
) -> dict:
    """Retrain the best trial of each method and a scratch student with K seeds; score on **test**.

    This is the only place that touches the test split. The result is stored on the study
    (user attr ``final_comparison``) and returned.
    """
    best = best_trials_per_method(study)
    if not best:
        raise KdsearchError(f"study {study.study_name!r} has no completed trial yet; run some trials first")
    f = data.spec.final
    seeds = list(range(f.first_seed, f.first_seed + f.seeds))
    test = data.splits.test.to(data.device)
    candidates = [(f"best {m}", m, *params_of(t)[1:], t.number) for m, t in sorted(best.items())]
    candidates.append(("scratch", "scratch", {}, None))
    students = []
    for label, method, params, number in candidates:
        runs = []
        for seed in seeds:
            model, _ = train_student(data, method, params, seed)
            acc, roc = evaluate(model, test)
            runs.append({"seed": seed, "accuracy": acc, "auc": roc})
            if on_run is not None:
                on_run(label, seed)
        students.append({"label": label, "method": method, "params": params, "trial": number, "runs": runs})
    result = {
        "split": "test",
        "objective": data.spec.search.objective,
        "seeds": seeds,
        "students": students,
        "teacher": {"accuracy": teacher.metrics["test_accuracy"], "auc": teacher.metrics["test_auc"]},
        "n_complete_trials": len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
    }
    study.set_user_attr(FINAL_ATTR, result)
    return result

